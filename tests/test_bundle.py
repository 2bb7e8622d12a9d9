"""Bundles round-trip exactly, are validated on load, never overwritten, never run code."""

import hashlib
import json
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from napari_scan_classifier.errors import InvalidBundleError
from napari_scan_classifier.models.architectures import build_cnn3d
from napari_scan_classifier.models.bundle import (
    Bundle,
    BundleExistsError,
    BundleMetadata,
    derive,
    load_bundle,
    next_version,
    save_bundle,
    save_bundle_zip,
)
from napari_scan_classifier.models.bundled import bundled_model_path

SHAPE = (8, 16, 16)


@pytest.fixture(scope="module")
def model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_cnn3d((*SHAPE, 1), 3, width=4)


def metadata(**changes) -> BundleMetadata:
    fields = {
        "name": "chest-demo",
        "version": 1,
        "classes": ["normal", "nodule", "mass"],
        "modality": "CT",
        "task": "volume",
        "input_shape": SHAPE,
        "target_spacing_mm": (4.0, 2.0, 2.0),
        "intensity": {"kind": "ct_window", "center": -600, "width": 1500},
        "architecture": "cnn3d",
        "training": {"cases": 12, "metrics": {"auc": 0.91}},
        "model_card": "Demo model; not for diagnosis.",
    }
    return BundleMetadata(**{**fields, **changes})


def scans() -> np.ndarray:
    return np.random.default_rng(2).random((2, *SHAPE, 1), dtype=np.float32)


@pytest.mark.parametrize("name", ["demo-v1", "demo-v1.zip"])
def test_round_trip_keeps_metadata_and_predictions(tmp_path, model, name):
    written = save_bundle(Bundle(metadata(), model), tmp_path / name)
    loaded = load_bundle(written)

    assert loaded.metadata == metadata(created=loaded.metadata.created)
    assert loaded.path == written
    np.testing.assert_allclose(
        loaded.model.predict(scans(), verbose=0)["volume"],
        model.predict(scans(), verbose=0)["volume"],
        rtol=1e-6,
    )
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no staging left behind


def test_a_zipped_bundle_folder_loads(tmp_path, model):
    folder = save_bundle(Bundle(metadata(), model), tmp_path / "demo-v1")
    archive = tmp_path / "shared.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for part in folder.iterdir():
            zf.write(part, f"demo-v1/{part.name}")
    assert load_bundle(archive).metadata.classes == ["normal", "nodule", "mass"]


@pytest.mark.parametrize("name", ["demo-v1", "demo-v1.zip"])
def test_saving_never_overwrites(tmp_path, model, name):
    save_bundle(Bundle(metadata(), model), tmp_path / name)
    before = sorted(p.stat().st_mtime_ns for p in tmp_path.rglob("*"))
    with pytest.raises(BundleExistsError, match="never overwritten"):
        save_bundle(Bundle(metadata(description="other"), model), tmp_path / name)
    with pytest.raises(FileExistsError):
        save_bundle_zip(Bundle(metadata(), model), tmp_path / name)
    assert sorted(p.stat().st_mtime_ns for p in tmp_path.rglob("*")) == before
    assert len(list(tmp_path.iterdir())) == 1


def saved_with(tmp_path: Path, model: keras.Model, **edits) -> Path:
    """A saved bundle whose bundle.json was then edited (None deletes a field)."""
    folder = save_bundle(Bundle(metadata(), model), tmp_path / "demo-v1")
    data = json.loads((folder / "bundle.json").read_text())
    data.update(edits)
    data = {k: v for k, v in data.items() if v is not None}
    (folder / "bundle.json").write_text(json.dumps(data))
    return folder


@pytest.mark.parametrize(
    ("edits", "message"),
    [
        ({"classes": None, "modality": None}, "lacks the field.*classes, modality"),
        ({"input_shape": "8x16x16"}, "input_shape must be three whole numbers"),
        ({"version": "1"}, "version must be a whole number"),
        ({"temperature": -1}, "temperature must be a positive number"),
        ({"intensity": {"kind": "zscore"}}, "CT models use a 'ct_window'"),
        ({"classes": ["a", "b"]}, "'volume' output has 3 units .* 2 classes"),
        ({"input_shape": [8, 16, 32]}, r"input of shape \(8, 16, 16, 1\) .* \(8, 16, 32\)"),
        ({"gradcam_layer": "nowhere"}, "no layer 'nowhere'"),
        ({"format_version": 99}, "update the plugin"),
    ],
)
def test_invalid_metadata_is_reported(tmp_path, model, edits, message):
    folder = saved_with(tmp_path, model, **edits)
    with pytest.raises(InvalidBundleError, match=f"'demo-v1' cannot be used: .*{message}"):
        load_bundle(folder)


def test_missing_parts_are_reported(tmp_path, model):
    folder = saved_with(tmp_path, model, files={})  # a bundle from before hashes were recorded
    (folder / "model.keras").write_bytes(b"truncated")
    with pytest.raises(InvalidBundleError, match="not a Keras 3 model file"):
        load_bundle(folder)
    (folder / "model.keras").unlink()
    with pytest.raises(InvalidBundleError, match=r"no model\.keras"):
        load_bundle(folder)
    (folder / "bundle.json").write_text("{not json")
    with pytest.raises(InvalidBundleError, match="not valid JSON"):
        load_bundle(folder)
    (folder / "bundle.json").unlink()
    with pytest.raises(InvalidBundleError, match=r"no bundle\.json"):
        load_bundle(folder)
    with pytest.raises(InvalidBundleError, match="does not exist"):
        load_bundle(tmp_path / "elsewhere")


def test_an_inconsistent_bundle_is_not_saved(tmp_path, model):
    with pytest.raises(InvalidBundleError, match="2 classes"):
        save_bundle(Bundle(metadata(classes=["a", "b"]), model), tmp_path / "bad")
    assert not any(tmp_path.iterdir())


def lambda_bundle(tmp_path: Path, marker: Path) -> Path:
    """A bundle whose model.keras holds a Lambda layer that touches ``marker`` when run."""
    inputs = keras.Input((*SHAPE, 1))
    path = str(marker)  # a closure cell: Keras stores it with the lambda's bytecode
    touched = keras.layers.Lambda(lambda t: (__import__("pathlib").Path(path).touch(), t)[1])(
        inputs
    )
    logits = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling3D()(touched))
    folder = tmp_path / "evil-v1"
    folder.mkdir()
    keras.Model(inputs, {"volume": logits}).save(folder / "model.keras")
    (folder / "bundle.json").write_text(json.dumps(metadata().to_dict()))
    marker.unlink()  # building the model ran the lambda once; start clean
    return folder


def test_a_model_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "lambda-ran"
    folder = lambda_bundle(tmp_path, marker)

    # The lambda is live: loading without safe mode would run it.
    keras.saving.load_model(folder / "model.keras", safe_mode=False, compile=False)
    assert marker.exists()
    marker.unlink()

    for bundle_path in (folder, _zipped(folder)):
        with pytest.raises(InvalidBundleError, match=r"contains code .*and was refused"):
            load_bundle(bundle_path)
    assert not marker.exists()


def test_a_model_naming_foreign_modules_is_refused(tmp_path, model):
    folder = saved_with(tmp_path, model, files={})  # else the changed file's hash refuses it
    keras_file = folder / "model.keras"
    with zipfile.ZipFile(keras_file) as zf:
        parts = {name: zf.read(name) for name in zf.namelist()}
    config = json.loads(parts["config.json"])
    config["config"]["layers"][1]["module"] = "os"
    parts["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(keras_file, "w") as zf:
        for name, data in parts.items():
            zf.writestr(name, data)
    with pytest.raises(InvalidBundleError, match=r"module 'os'.* was refused"):
        load_bundle(folder)


def test_derive_records_the_parent():
    parent = metadata(version=3)
    child = derive(parent, description="fine-tuned on local cases")

    assert next_version(parent) == 4
    assert (child.version, child.parent_version) == (4, 3)
    assert child.description == "fine-tuned on local cases" and child.classes == parent.classes
    child.training["metrics"]["auc"] = 0.5
    assert parent.training["metrics"]["auc"] == 0.91
    with pytest.raises(InvalidBundleError, match="modality"):
        derive(parent, modality="PET")


def _zipped(folder: Path) -> Path:
    archive = folder.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w") as zf:
        for part in folder.iterdir():
            zf.write(part, part.name)
    return archive


def flip_weight_bytes(keras_file: Path, count: int = 20) -> None:
    """Flip ``count`` bytes in the middle of the weights stored inside a ``.keras`` file."""
    with zipfile.ZipFile(keras_file) as zf:
        info = zf.getinfo("model.weights.h5")
    raw = bytearray(keras_file.read_bytes())
    # the local header: 30 bytes, then the name and the extra field, then the stored data
    start = (
        info.header_offset
        + 30
        + int.from_bytes(raw[info.header_offset + 26 : info.header_offset + 28], "little")
    )
    start += int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little")
    middle = start + info.compress_size // 2
    for i in range(middle, middle + count):
        raw[i] ^= 0xFF
    keras_file.write_bytes(bytes(raw))


DAMAGED = (
    r"^Model bundle 'demo-v1(\.zip)?' cannot be used: model\.keras was modified or damaged "
    r"after the model was saved: its SHA-256 does not match the one in bundle\.json; get a "
    r"fresh copy of the model$"
)


def test_saving_records_the_sha256_of_every_file(tmp_path, model):
    folder = save_bundle(
        Bundle(metadata(), model), tmp_path / "demo-v1", extra_files={"roc.png": b"png bytes"}
    )
    recorded = json.loads((folder / "bundle.json").read_text())["files"]

    assert sorted(recorded) == ["model.keras", "roc.png"]
    assert recorded["roc.png"] == hashlib.sha256(b"png bytes").hexdigest()
    assert (
        recorded["model.keras"] == hashlib.sha256((folder / "model.keras").read_bytes()).hexdigest()
    )
    assert load_bundle(folder).metadata.files == recorded
    assert derive(load_bundle(folder).metadata).files == {}  # a new version gets its own


def test_flipped_weight_bytes_are_refused(tmp_path, model):
    folder = save_bundle(Bundle(metadata(), model), tmp_path / "demo-v1")
    flip_weight_bytes(folder / "model.keras")

    with pytest.raises(InvalidBundleError, match=DAMAGED) as refused:
        load_bundle(folder)
    assert str(tmp_path) not in str(refused.value)


def test_flipped_weight_bytes_in_a_zip_bundle_are_refused(tmp_path, model):
    staged = save_bundle(Bundle(metadata(), model), tmp_path / "staged")
    flip_weight_bytes(staged / "model.keras")
    archive = tmp_path / "demo-v1.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for part in staged.iterdir():
            zf.write(part, part.name)

    with pytest.raises(InvalidBundleError, match=DAMAGED):
        load_bundle(archive)


def test_a_changed_or_missing_extra_file_is_named(tmp_path, model):
    folder = save_bundle(
        Bundle(metadata(), model), tmp_path / "demo-v1", extra_files={"roc.png": b"png bytes"}
    )
    (folder / "roc.png").write_bytes(b"other bytes")
    with pytest.raises(InvalidBundleError, match=r"roc\.png was modified or damaged"):
        load_bundle(folder)
    (folder / "roc.png").unlink()
    with pytest.raises(InvalidBundleError, match=r"roc\.png is missing: the model file was"):
        load_bundle(folder)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"model.keras": "abc"}, "files must map plain file names to SHA-256 digests"),
        ({"../model.keras": "0" * 64}, "files must map plain file names"),
        ({"roc.png": "0" * 64}, r"files must list model\.keras"),
    ],
)
def test_a_malformed_hash_record_is_reported(tmp_path, model, files, message):
    with pytest.raises(InvalidBundleError, match=message):
        load_bundle(saved_with(tmp_path, model, files=files))


def test_the_shipped_bundle_records_every_file():
    folder = bundled_model_path()
    recorded = json.loads((folder / "bundle.json").read_text())["files"]
    on_disk = {p.name for p in folder.iterdir() if p.is_file() and p.name != "bundle.json"}

    assert set(recorded) == on_disk
    assert load_bundle(folder).metadata.files == recorded
