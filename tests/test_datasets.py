"""Training sources load as labelled arrays on the model grid: npz files and case libraries."""

from pathlib import Path

import numpy as np
import pytest

from napari_scan_classifier import datasets, phantoms
from napari_scan_classifier.cases import CaseLibrary
from napari_scan_classifier.errors import TrainingError
from napari_scan_classifier.volume import Volume

CT_WINDOW = {"kind": "ct_window", "center": 40.0, "width": 400.0}
MEDMNIST = Path(__file__).parents[2] / "shared" / "data" / "medmnist3d"


def write_npz(path: Path, shape=(8, 8, 8), test: bool = True, **overrides) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 6), ("val", 4), ("test", 4)):
        if split == "test" and not test:
            continue
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).astype(np.uint8)[:, None]
    arrays.update(overrides)
    np.savez(path, **arrays)
    return path


def test_npz_scales_uint8_to_unit_range_and_keeps_splits(tmp_path):
    path = write_npz(tmp_path / "tiny.npz")
    with np.load(path) as raw:
        expected = raw["val_images"].astype(np.float32) / 255

    data = datasets.load_npz(path)

    assert set(data.splits) == {"train", "val", "test"}
    assert data.class_names == ("0", "1")
    np.testing.assert_allclose(data.splits["val"].x, expected)
    assert data.splits["train"].y.tolist() == [0, 1, 0, 1, 0, 1]
    assert data.splits["val"].x.dtype == np.float32
    assert data.split(None) is data.splits["test"]


def test_npz_without_test_defaults_to_val_and_resizes(tmp_path):
    data = datasets.load_npz(write_npz(tmp_path / "tiny.npz", test=False), shape=(12, 10, 16))

    assert data.shape == (12, 10, 16)
    assert data.split(None) is data.splits["val"]
    assert data.splits["train"].x.min() >= 0.0 and data.splits["train"].x.max() <= 1.0
    with pytest.raises(TrainingError, match="no split 'test'"):
        data.split("test")


def test_npz_class_names_come_from_the_file_or_the_caller_never_the_file_name(tmp_path):
    renamed = write_npz(tmp_path / "adrenalmnist3d_64.npz")
    assert datasets.load_npz(renamed).class_names == ("0", "1")
    given = datasets.load_npz(renamed, class_names=["normal", "hyperplasia"])
    assert given.class_names == ("normal", "hyperplasia")

    own = write_npz(tmp_path / "nodulemnist3d.npz", class_names=np.array(["healthy", "cyst"]))
    assert datasets.load_npz(own).class_names == ("healthy", "cyst")
    assert datasets.load_npz(own, class_names=("healthy", "cyst")).class_names == (
        "healthy",
        "cyst",
    )
    with pytest.raises(TrainingError, match=r"names its classes \['healthy', 'cyst'\], not"):
        datasets.load_npz(own, class_names=("a", "b"))
    with pytest.raises(TrainingError, match="has labels 0 to 1 but 1 class names"):
        datasets.load_npz(renamed, class_names=("only",))


def test_an_npz_of_mostly_background_is_not_taken_for_a_zip_bomb(tmp_path):
    images = np.zeros((8, 64, 64, 64), dtype=np.uint8)  # 2 MiB, compresses ~1000-fold
    images[:, 30:34, 30:34, 30:34] = 200
    labels = np.array([[0], [1]] * 4, dtype=np.uint8)
    np.savez_compressed(tmp_path / "sparse.npz", train_images=images, train_labels=labels)

    data = datasets.load_npz(tmp_path / "sparse.npz")

    assert data.splits["train"].x.shape == (8, 64, 64, 64)
    assert float(data.splits["train"].x.max()) == pytest.approx(200 / 255)


def test_class_names_do_not_apply_to_a_case_library(tmp_path):
    (tmp_path / "library").mkdir()
    with pytest.raises(TrainingError, match=r"^Class names \(--classes\) name an npz file's"):
        datasets.load_source(tmp_path / "library", (8, 8, 8), None, CT_WINDOW, class_names=["a"])


def test_an_npz_with_only_a_test_split_loads_for_evaluation(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "test_only.npz"
    np.savez(
        path,
        test_images=rng.integers(0, 256, (5, 8, 8, 8), dtype=np.uint8),
        test_labels=np.array([[0], [1], [1], [0], [1]], dtype=np.uint8),
    )
    data = datasets.load_npz(path, class_names=("normal", "lesion"))

    assert data.description == "npz file of 5 test volumes"  # never the file's name
    assert set(data.splits) == {"test"}
    assert data.split(None).y.tolist() == [0, 1, 1, 0, 1]
    assert data.class_names == ("normal", "lesion")
    np.savez(path, other=np.zeros(3))
    with pytest.raises(TrainingError, match="has none of train_images, val_images, test_images"):
        datasets.load_npz(path)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.npz", None, ": no such file or folder"),
        (
            "flat.npz",
            {"train_images": np.zeros((3, 8, 8), np.uint8)},
            ": train_images has shape (3, 8, 8); expected 3D volumes N x D x H x W (a 2D "
            "MedMNIST set cannot train a 3D model)",
        ),
        (
            "nolabels.npz",
            {"train_images": np.zeros((3, 4, 4, 4), np.uint8)},
            " has train_images but no train_labels",
        ),
        (
            "other.npz",
            {"x": np.zeros(3)},
            " has none of train_images, val_images, test_images: not a MedMNIST-style npz",
        ),
    ],
)
def test_unreadable_sources_raise_training_errors_that_do_not_name_them(
    tmp_path, name, content, message
):
    path = tmp_path / "Doe_Jane" / name  # folders are often named after patients
    path.parent.mkdir()
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        np.savez(path, **content)
    with pytest.raises(TrainingError) as error:
        datasets.load_source(path, (8, 8, 8), None, CT_WINDOW)
    assert str(error.value) == f"the input (training data){message}"


def test_a_file_numpy_cannot_read_is_refused_without_its_name(tmp_path):
    path = tmp_path / "Doe_Jane" / "garbage.npz"
    path.parent.mkdir()
    path.write_bytes(b"not a zip at all")
    with pytest.raises(TrainingError) as error:
        datasets.load_source(path, (8, 8, 8), None, CT_WINDOW)
    text = str(error.value)
    assert text.startswith(
        "the input (training data) is neither a case library folder nor a readable .npz file ("
    )
    assert "Doe_Jane" not in text and "garbage" not in text


def test_a_folder_that_is_no_case_library_is_refused_without_its_name(tmp_path):
    (tmp_path / "Doe_Jane").mkdir()
    with pytest.raises(TrainingError) as empty:
        datasets.load_source(tmp_path / "Doe_Jane", (8, 8, 8), None, CT_WINDOW)
    with pytest.raises(TrainingError) as not_a_folder:
        datasets.load_case_library(tmp_path / "Doe_Jane.npz", (8, 8, 8), None, CT_WINDOW)
    assert str(empty.value) == (
        "the input (training data) is a case library that holds no readable cases"
    )
    assert str(not_a_folder.value) == "the input (training data) is not a case library folder"


def test_case_library_is_prepared_on_the_model_grid(tmp_path):
    library = CaseLibrary(tmp_path / "cases")
    for case in phantoms.make_cases(4, seed=1, shape=(12, 20, 20)):
        library.add(case.volume, case.class_name)
    loaded = []

    data = datasets.load_source(
        tmp_path / "cases", (8, 16, 16), None, CT_WINDOW, progress=lambda d, t: loaded.append(d)
    )

    cases = data.splits[datasets.ALL]
    assert data.class_names == ("normal", "lesion")  # the normal-like label first
    assert cases.x.shape == (4, 8, 16, 16)
    assert cases.x.min() >= 0.0 and cases.x.max() <= 1.0
    assert cases.counts(data.class_names) == {"normal": 2, "lesion": 2}
    assert cases.axes.tolist() == [[0, 2]] * 4  # axial stacks: slices run superior-inferior
    assert data.modalities == ("CT",)
    assert loaded == [1, 2, 3, 4]


def test_an_empty_library_or_a_missing_folder_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainingError, match="no readable cases"):
        datasets.load_source(tmp_path / "empty", (8, 8, 8), None, CT_WINDOW)
    with pytest.raises(TrainingError, match="no such file"):
        datasets.load_source(tmp_path / "nowhere", (8, 8, 8), None, CT_WINDOW)
    assert not (tmp_path / "nowhere").exists()


def test_anatomical_axes_follow_the_affine():
    axial = np.diag([2.5, 1.5, 1.5, 1.0])
    sagittal = np.array(  # slices run left-right, rows superior-inferior, columns posterior
        [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    )
    assert datasets.anatomical_axes(axial) == (0, 2)
    assert datasets.anatomical_axes(sagittal) == (1, 0)
    ras_mr = phantoms.make_case(0, 0, "MR", shape=(8, 12, 12)).volume.affine
    assert datasets.anatomical_axes(ras_mr) == (0, 2)


def test_from_volumes_keeps_the_given_class_order():
    volume = Volume(np.random.default_rng(0).normal(size=(6, 8, 8)), np.eye(4), "MR")
    data = datasets.from_volumes(
        [(volume, "b"), (volume, "a")], (4, 4, 4), None, {"kind": "zscore"}, class_names=("b", "a")
    )
    assert data.splits[datasets.ALL].y.tolist() == [0, 1]
    assert datasets.class_order(["lesion", "Normal", "cyst"]) == ("Normal", "cyst", "lesion")


@pytest.mark.realdata
@pytest.mark.skipif(not MEDMNIST.is_dir(), reason="shared MedMNIST data not present")
def test_real_adrenalmnist3d_trainval_file():
    data = datasets.load_npz(
        MEDMNIST / "adrenalmnist3d_trainval.npz",
        class_names=datasets.MEDMNIST_CLASSES["adrenalmnist3d"],
    )

    assert data.class_names == ("normal", "hyperplasia")
    assert data.shape == (28, 28, 28)
    assert data.splits["train"].counts(data.class_names) == {"normal": 929, "hyperplasia": 259}
    assert data.splits["val"].counts(data.class_names) == {"normal": 76, "hyperplasia": 22}
    assert set(np.unique(data.splits["val"].x)) <= {0.0, 1.0}
