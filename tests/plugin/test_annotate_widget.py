"""The Annotate widget: cases saved with the right label and mask, refusals that write nothing,
cases opened where they belong, relabelled, deleted and restored, exchanged as zips, painted
masks kept as drafts, and the uncertainty ranking the core computes."""

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
from napari_scan_classifier.cases import DRAFTS, CaseLibrary
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
from napari_scan_classifier.plugin.widgets import annotate_library
from napari_scan_classifier.plugin.widgets.annotate import (
    CASE_KEY,
    DATA_ROLE,
    DRAFT_DELAY_MS,
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
    """Wait for the widget's job (save, open, rank, library actions) and its drafts to end."""
    qtbot.waitUntil(
        lambda: widget.worker is None and not widget.drafts.busy, timeout=JOB_TIMEOUT_MS
    )


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

    monkeypatch.setattr(cases.store, "save_nifti", fail)

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
    assert [float(text.split(" · ")[1].split()[-1]) for text in shown] == pytest.approx(
        [r.score for r in expected], abs=1e-3
    )
    assert "lesion" in widget.class_label.choices  # the ranking model's classes are offered

    widget.ranking.itemClicked.emit(widget.ranking.item(0))
    assert viewer.layers.selection.active is layers[expected[0].item]
    assert widget.scan.value is layers[expected[0].item]


def test_scans_in_a_folder_are_ranked_and_opened_on_click(
    qtbot, viewer, widget, model_path, tmp_path, notifications
):
    folder = tmp_path / "DOE^JOHN_1234"  # folders are often named after patients
    folder.mkdir()
    volumes = [make_case(seed, seed % 2, shape=SHAPE).volume for seed in range(3)]
    for seed, volume in enumerate(volumes):
        save_nifti(volume, folder / f"DOE^JOHN_1234_scan{seed}.nii.gz")
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
    assert first.startswith(f"1. input 1, NIfTI file {seed + 1}: CT · ")  # its sorted place
    shown = [widget.ranking.item(i).text() for i in range(3)] + [n.message for n in notifications]
    assert not any("DOE" in text for text in shown)
    assert " · entropy 0." in first and " · predicted " in first and "(p = 0." in first
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


def select_case(widget: AnnotateWidget, case_id: str) -> int:
    """Select a case in the list, as a click does; returns its row."""
    row = [widget.cases.item(i).data(DATA_ROLE) for i in range(widget.cases.count())].index(case_id)
    widget.cases.setCurrentRow(row)
    return row


def library_summary(library: CaseLibrary) -> list[tuple[str, str, str, int]]:
    """Each case by content: hash, label, modality and painted voxels."""
    summary = []
    for record in library.list():
        _, mask = library.load(record.case_id)
        painted = 0 if mask is None else int(np.count_nonzero(mask))
        summary.append((record.content_hash, record.label, record.modality, painted))
    return sorted(summary)


def test_relabel_changes_the_stored_label_and_the_counts(qtbot, viewer, widget, notifications):
    layers = [add_scan(viewer, seed, seed % 2) for seed in range(3)]
    for layer, label in zip(layers, ["normal", "lesion", "normal"], strict=True):
        save(qtbot, widget, layer, label)
    library = CaseLibrary(widget.library.value)
    first = library.list()[0]
    assert widget.counts.value == "3 cases: lesion 1, normal 2"

    widget.relabel_button.changed.emit(True)  # nothing selected yet
    assert "Click a case" in notifications[-1].message
    row = select_case(widget, first.case_id)
    widget.class_label.value = "lesion"
    widget.relabel_button.changed.emit(True)
    finish(qtbot, widget)

    assert library.get(first.case_id).label == "lesion"
    assert library.counts() == {"lesion": 2, "normal": 1}
    assert widget.counts.value == "3 cases: lesion 2, normal 1"
    assert widget.selected_case() == first.case_id
    assert widget.cases.item(row).text().startswith("lesion · CT ")
    assert notifications[-1].message == f"Case {first.case_id[:8]} is now labelled 'lesion'."

    widget.new_label.value = "   "
    widget.class_label.value = None
    assert widget.relabel_case() is None  # no label: refused, nothing changed
    assert "needs a class label" in notifications[-1].message
    assert library.get(first.case_id).label == "lesion"


def test_a_deleted_case_goes_to_the_trash_and_comes_back(qtbot, viewer, widget, notifications):
    lesion_scan = add_scan(viewer, 0, 1)
    widget.scan.value = lesion_scan
    widget.add_mask().data[5:9, 10:12, 3:7] = 1
    save(qtbot, widget, lesion_scan, "lesion")
    save(qtbot, widget, add_scan(viewer, 1, 0), "normal")
    library = CaseLibrary(widget.library.value)
    (lesion,) = [record for record in library.list() if record.label == "lesion"]

    select_case(widget, lesion.case_id)
    widget.delete_button.changed.emit(True)
    finish(qtbot, widget)

    assert library.counts() == {"normal": 1}
    assert library.list_trash() == [lesion]
    assert widget.counts.value == "1 case: normal 1"
    assert widget.cases.count() == 1
    assert widget.trash.value == lesion.case_id
    assert "moved to the trash" in notifications[-1].message
    assert "Restore brings it back" in notifications[-1].message

    widget.restore_button.changed.emit(True)
    finish(qtbot, widget)

    assert library.get(lesion.case_id) == lesion
    assert library.counts() == {"lesion": 1, "normal": 1}
    assert int(np.count_nonzero(library.load(lesion.case_id)[1])) == 4 * 2 * 4
    assert widget.counts.value == "2 cases: lesion 1, normal 1"
    assert widget.selected_case() == lesion.case_id
    assert widget.trash.choices == (None,)  # the trash is empty
    assert (
        notifications[-1].message == f"Case {lesion.case_id[:8]} 'lesion' is back in the library."
    )

    assert widget.restore_case() is None
    assert "trash is empty" in notifications[-1].message


def test_export_then_import_into_a_fresh_library_gives_the_same_cases(
    qtbot, viewer, widget, tmp_path, monkeypatch, notifications
):
    first = add_scan(viewer, 0, 1, turn=True)
    widget.scan.value = first
    widget.add_mask().data[3:6, 4:9, 10:12] = 1
    for layer, label in [(first, "lesion"), (add_scan(viewer, 1, 0), "normal")]:
        save(qtbot, widget, layer, label)
    original = CaseLibrary(widget.library.value)
    archive = tmp_path / "shared.zip"
    monkeypatch.setattr(annotate_library, "_ask_zip", lambda parent, save: archive)

    widget.export_button.changed.emit(True)
    finish(qtbot, widget)

    assert archive.is_file()
    assert notifications[-1].message == "Exported 2 cases to shared.zip."
    widget.library.value = tmp_path / "fresh"
    assert widget.cases.count() == 0
    widget.import_button.changed.emit(True)
    finish(qtbot, widget)

    fresh = CaseLibrary(tmp_path / "fresh")
    assert library_summary(fresh) == library_summary(original)
    assert [s[3] for s in library_summary(fresh)].count(3 * 5 * 2) == 1  # the painted mask
    for record in fresh.list():
        (twin,) = [r for r in original.list() if r.content_hash == record.content_hash]
        np.testing.assert_array_equal(
            fresh.load(record.case_id)[0].voxels, original.load(twin.case_id)[0].voxels
        )
    assert widget.counts.value == "2 cases: lesion 1, normal 1"
    assert notifications[-1].message == "Imported 2 cases."

    assert widget.import_library(archive) is not None  # again: duplicates are left out
    finish(qtbot, widget)
    assert "Imported 0 cases. Left out:" in notifications[-1].message
    assert "already in the library" in notifications[-1].message
    assert len(fresh.list()) == 2


def test_library_exchange_errors_are_one_line(qtbot, viewer, widget, tmp_path, notifications):
    not_a_zip = tmp_path / "notes.zip"
    not_a_zip.write_text("not a zip")

    widget.export_library(tmp_path / "empty.zip")
    finish(qtbot, widget)
    assert notifications[-1].message == "The library has no cases to export yet."
    assert notifications[-1].severity == "error"
    assert not (tmp_path / "empty.zip").exists()

    widget.import_library(not_a_zip)
    finish(qtbot, widget)
    assert (
        notifications[-1].message == "notes.zip is not a readable zip file (File is not a zip file)"
    )
    assert widget.import_button.enabled and widget.export_button.enabled


def draft_files(widget: AnnotateWidget) -> list[Path]:
    folder = Path(widget.library.value) / DRAFTS
    return sorted(folder.iterdir()) if folder.is_dir() else []


def test_a_painted_mask_survives_a_crash_as_a_draft(qtbot, viewer, widget, notifications):
    widget.scan.value = add_scan(viewer, 1, 1, turn=True)
    mask = widget.add_mask()
    finish(qtbot, widget)  # no draft for this scan yet: the mask stays empty
    assert not mask.data.any()
    mask.brush_size = 4
    mask.paint((12, 10, 10), 1)
    mask.paint((12, 11, 12), 1)
    painted = mask.data.copy()
    assert painted.any()
    assert widget.drafts.timer.isActive()  # written a moment after the last stroke, not now
    assert widget.drafts.timer.interval() == DRAFT_DELAY_MS
    assert draft_files(widget) == []

    widget.drafts.timer.stop()
    widget.drafts.flush()
    finish(qtbot, widget)
    assert len(draft_files(widget)) == 1

    viewer.layers.clear()  # the viewer is gone; the same scan is opened again in a new one
    scan = add_scan(viewer, 1, 1, turn=True)
    reopened = AnnotateWidget(viewer)
    reopened.library.value = widget.library.value
    reopened.scan.value = scan
    restored = reopened.add_mask()
    finish(qtbot, reopened)

    np.testing.assert_array_equal(restored.data, painted)
    assert "Restored the lesion mask" in notifications[-1].message
    save(qtbot, reopened, scan, "lesion")
    assert draft_files(widget) == []  # saving the case removes its draft
    (record,) = CaseLibrary(widget.library.value).list()
    _, saved = CaseLibrary(widget.library.value).load(record.case_id)
    assert np.count_nonzero(saved) == np.count_nonzero(painted)
