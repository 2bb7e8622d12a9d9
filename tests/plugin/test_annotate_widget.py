"""The Annotate widget: cases saved with the right label and mask, refusals that write nothing,
cases opened where they belong, and the uncertainty ranking the core computes."""

from __future__ import annotations

import errno
from pathlib import Path

import keras
import numpy as np
import pytest
from napari.components import ViewerModel
from napari.layers import Image, Labels

from napari_scan_classifier import cases
from napari_scan_classifier.active_learning import rank_by_uncertainty
from napari_scan_classifier.cases import CaseLibrary
from napari_scan_classifier.io.nifti import save_nifti
from napari_scan_classifier.models import (
    Bundle,
    BundleMetadata,
    build_cnn3d,
    load_bundle,
    save_bundle,
)
from napari_scan_classifier.phantoms import make_case
from napari_scan_classifier.plugin.layers import scan_volume, volume_to_layer_data
from napari_scan_classifier.plugin.widgets.annotate import (
    CASE_KEY,
    DATA_ROLE,
    AnnotateWidget,
)
from napari_scan_classifier.plugin.widgets.classify import CLASSIFICATION_KEY
from napari_scan_classifier.volume import Volume

SHAPE = (24, 32, 32)
JOB_TIMEOUT_MS = 60_000


@pytest.fixture
def widget(viewer: ViewerModel, tmp_path: Path) -> AnnotateWidget:
    widget = AnnotateWidget(viewer)
    widget.library.value = tmp_path / "library"
    return widget


def sagittal(volume: Volume) -> Volume:
    """The same voxels as acquired sagitally: stored (x, z, y), so napari shows a transpose."""
    return Volume(
        np.ascontiguousarray(volume.voxels.transpose(2, 0, 1)),
        volume.affine[:, [2, 0, 1, 3]],
        modality=volume.modality,
    )


def add_scan(viewer: ViewerModel, seed: int, label: int, *, turn: bool = False) -> Image:
    volume = make_case(seed, label, shape=SHAPE).volume
    data, kwargs, _ = volume_to_layer_data(sagittal(volume) if turn else volume)
    return viewer.add_image(data, **kwargs)


def finish(qtbot, widget: AnnotateWidget) -> None:
    """Wait for the widget's job (save, open, rank) to end."""
    qtbot.waitUntil(lambda: widget.worker is None, timeout=JOB_TIMEOUT_MS)


def save(qtbot, widget: AnnotateWidget, layer: Image, label: str) -> None:
    widget.scan.value = layer
    widget.new_label.value = label
    assert widget.save_case() is not None
    finish(qtbot, widget)


def library_files(widget: AnnotateWidget) -> list[Path]:
    root = Path(widget.library.value)
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_two_classes_and_a_painted_mask_are_saved_on_the_acquired_grid(qtbot, viewer, widget):
    scans = [add_scan(viewer, seed, seed % 2, turn=seed == 1) for seed in range(4)]
    scans[1].metadata[CLASSIFICATION_KEY] = {
        "model": {"name": "demo", "version": 1},
        "predicted_class": "lesion",
        "probabilities": {"normal": 0.3, "lesion": 0.7},
        "uncertainty": {"std": {"normal": 0.1, "lesion": 0.1}, "predictive_entropy": 0.61},
        "per_slice": None,
    }
    widget.scan.value = scans[1]
    mask = widget.add_mask()
    assert mask.data.shape == scans[1].data.shape
    np.testing.assert_allclose(mask.affine.affine_matrix, scans[1].affine.affine_matrix)
    painted = np.zeros(mask.data.shape, dtype=bool)
    painted[10:14, 5:9, 20:23] = True  # layer grid (z, y, x): the transposed view
    mask.data[painted] = 1

    for layer, label in zip(scans, ["normal", "lesion", "normal", "lesion"], strict=True):
        save(qtbot, widget, layer, label)

    library = CaseLibrary(widget.library.value)
    assert library.counts() == {"lesion": 2, "normal": 2}
    assert widget.cases.count() == 4
    assert widget.counts.value == "4 cases: lesion 2, normal 2"
    (with_mask,) = [r for r in library.list() if r.has_mask]
    assert with_mask.prediction["predicted_class"] == "lesion"
    assert "per_slice" not in with_mask.prediction
    volume, saved = library.load(with_mask.case_id)
    acquired = scan_volume(scans[1])
    assert volume.shape == acquired.shape == (32, 24, 32)  # stored as acquired (sagittal)
    np.testing.assert_array_equal(volume.voxels, acquired.voxels)
    # every painted voxel, through world mm, lands on a mask voxel of the acquired grid
    layer_points = np.argwhere(painted)
    world = layer_points @ mask.affine.affine_matrix[:3, :3].T + mask.affine.affine_matrix[:3, 3]
    indices = np.round(volume.world_to_index(world)).astype(int)
    assert saved.sum() == painted.sum()
    assert saved[tuple(indices.T)].all()


def test_saving_without_a_label_writes_nothing(qtbot, viewer, widget, notifications):
    widget.scan.value = add_scan(viewer, 0, 0)
    widget.class_label.value = None

    assert widget.save_case() is None

    assert "needs a class label" in notifications[-1].message
    assert library_files(widget) == []


def test_a_mask_on_another_grid_is_refused(qtbot, viewer, widget, notifications):
    layer = add_scan(viewer, 0, 1)
    other = viewer.add_labels(np.ones((12, 16, 16), dtype=np.uint8), scale=(2, 2, 2))
    widget.scan.value = layer
    widget.mask.value = other
    widget.new_label.value = "lesion"

    assert widget.save_case() is None

    assert "another grid" in notifications[-1].message
    assert library_files(widget) == []


@pytest.mark.parametrize(
    ("failure", "said"),
    [
        (PermissionError(errno.EACCES, "Permission denied"), "read-only"),
        (OSError(errno.ENOSPC, "No space left on device"), "disk is full"),
    ],
)
def test_a_read_only_or_full_library_is_explained(
    qtbot, viewer, widget, notifications, monkeypatch, failure, said
):
    def fail(*_: object) -> None:
        raise failure

    monkeypatch.setattr(cases, "save_nifti", fail)

    save(qtbot, widget, add_scan(viewer, 0, 0), "normal")

    assert said in notifications[-1].message
    assert notifications[-1].severity == "error"
    assert CaseLibrary(widget.library.value).list() == []
    assert not any(p.is_file() for p in (Path(widget.library.value) / ".incoming").rglob("*"))
    assert widget.save_button.enabled


def test_a_duplicate_is_refused(qtbot, viewer, widget, notifications):
    layer = add_scan(viewer, 0, 0)
    save(qtbot, widget, layer, "normal")

    save(qtbot, widget, layer, "lesion")

    assert "already in the library" in notifications[-1].message
    assert CaseLibrary(widget.library.value).counts() == {"normal": 1}


def test_a_clicked_case_opens_where_it_was_acquired(qtbot, viewer, widget):
    layer = add_scan(viewer, 1, 1, turn=True)
    widget.scan.value = layer
    mask = widget.add_mask()
    mask.data[5:9, 10:12, 3:7] = 1
    save(qtbot, widget, layer, "lesion")
    viewer.layers.clear()

    item = widget.cases.item(0)
    widget.cases.itemClicked.emit(item)
    finish(qtbot, widget)

    opened, opened_mask = viewer.layers
    assert isinstance(opened, Image) and isinstance(opened_mask, Labels)
    assert opened.metadata[CASE_KEY] == item.data(DATA_ROLE)
    assert opened.name.startswith("case ") and opened.name.endswith(" · lesion")
    np.testing.assert_allclose(opened.affine.affine_matrix, layer.affine.affine_matrix, atol=1e-4)
    np.testing.assert_allclose(opened_mask.affine.affine_matrix, opened.affine.affine_matrix)
    np.testing.assert_array_equal(opened.data, layer.data)
    np.testing.assert_array_equal(opened_mask.data, mask.data)
    assert widget.mask.value is opened_mask  # the opened case is ready to save again

    widget.cases.itemClicked.emit(item)  # already open: selected, not opened twice
    assert len(viewer.layers) == 2 and viewer.layers.selection.active is opened


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    """A tiny deterministic model (dropout rate 0) whose scans' uncertainties differ."""
    keras.utils.set_random_seed(0)
    model = build_cnn3d((16, 16, 16, 1), 2, width=4, dropout=0.0)
    dense = model.get_layer("volume_logits")
    dense.kernel.assign(dense.kernel * 40.0)
    metadata = BundleMetadata(
        name="tiny",
        version=1,
        classes=["normal", "lesion"],
        modality="CT",
        task="volume",
        input_shape=(16, 16, 16),
        target_spacing_mm=None,
        intensity={"kind": "ct_window", "center": 40.0, "width": 400.0},
        architecture="cnn3d",
    )
    return save_bundle(Bundle(metadata, model), tmp_path_factory.mktemp("models") / "tiny")


def test_the_ranking_is_the_cores_and_a_click_selects_the_scan(qtbot, viewer, widget, model_path):
    layers = [add_scan(viewer, seed, seed % 2, turn=seed == 2) for seed in range(4)]
    widget.model.value = model_path / "bundle.json"
    widget.measure.value = "margin"
    widget.passes.value = 3

    assert widget.rank() is not None
    finish(qtbot, widget)

    expected = rank_by_uncertainty(
        [scan_volume(layer) for layer in layers],
        load_bundle(model_path),
        measure="margin",
        passes=3,
    )
    shown = [widget.ranking.item(i).text() for i in range(widget.ranking.count())]
    assert [text.split(" · ")[0] for text in shown] == [
        f"{r.rank}. {layers[r.item].name}" for r in expected
    ]
    assert [float(text.split(" · ")[1]) for text in shown] == pytest.approx(
        [r.score for r in expected], abs=1e-3
    )
    assert "lesion" in widget.class_label.choices  # the ranking model's classes are offered

    widget.ranking.itemClicked.emit(widget.ranking.item(0))
    assert viewer.layers.selection.active is layers[expected[0].item]
    assert widget.scan.value is layers[expected[0].item]


def test_scans_in_a_folder_are_ranked_and_opened_on_click(
    qtbot, viewer, widget, model_path, tmp_path, notifications
):
    folder = tmp_path / "to-label"
    folder.mkdir()
    volumes = [make_case(seed, seed % 2, shape=SHAPE).volume for seed in range(3)]
    for seed, volume in enumerate(volumes):
        save_nifti(volume, folder / f"scan{seed}.nii.gz")
    (folder / "notes.txt").write_text("not a scan")
    widget.model.value = model_path / "bundle.json"
    widget.source.value = "folder"
    widget.folder.value = folder

    assert widget.rank() is not None
    finish(qtbot, widget)

    assert widget.ranking.count() == 3
    assert "no DICOM" in notifications[-1].message  # notes.txt, reported, not ranked
    first = widget.ranking.item(0).text()
    widget.ranking.itemClicked.emit(widget.ranking.item(0))
    finish(qtbot, widget)
    (opened,) = viewer.layers
    (seed,) = [i for i, v in enumerate(volumes) if np.array_equal(opened.data, v.voxels)]
    assert first.startswith(f"1. scan{seed}.nii.gz: CT · ")
    assert opened.name == "#1 CT"  # layer names never carry file names
    np.testing.assert_allclose(opened.affine.affine_matrix, volumes[seed].affine, atol=1e-4)
    assert viewer.layers.selection.active is opened

    widget.ranking.itemClicked.emit(widget.ranking.item(0))  # open: selected, not read again
    assert widget.worker is None and len(viewer.layers) == 1


def test_a_cancelled_ranking_shows_nothing(qtbot, viewer, widget, model_path, notifications):
    add_scan(viewer, 0, 0)
    widget.model.value = model_path / "bundle.json"

    assert widget.rank() is not None
    assert widget.cancel_button.enabled and not widget.rank_button.enabled
    widget.cancel_button.changed.emit(True)
    finish(qtbot, widget)

    assert notifications[-1].message == "Ranking was cancelled."
    assert widget.ranking.count() == 0
    assert widget.rank_button.enabled and not widget.cancel_button.enabled
