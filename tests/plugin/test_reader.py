"""The reader through napari itself: ``viewer.open(..., plugin=...)`` as a user's drop would."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dicom_helpers import file_positions
from geometry_checks import assert_same_scan
from napari.components import ViewerModel
from napari.utils.notifications import ErrorNotification, Notification, NotificationSeverity
from scan_files import MARKER_HU, PATIENT_ID, PATIENT_NAME, WINDOW, DicomSeries, write_ct_series

from napari_scan_classifier.io import load_scans
from napari_scan_classifier.io.nifti import load_nifti
from napari_scan_classifier.plugin.layers import layer_to_volume
from napari_scan_classifier.volume import lps_to_world

PLUGIN = "napari-scan-classifier"
PATIENT = "DOE^JOHN_1234"


def _severities(shown: list[Notification]) -> list[NotificationSeverity]:
    assert not any(isinstance(n, ErrorNotification) for n in shown), "an exception escaped"
    return [n.severity for n in shown]


def test_folder_of_two_series_opens_one_layer_each(
    viewer: ViewerModel, tmp_path: Path, notifications: list[Notification]
) -> None:
    study = tmp_path / "study"
    write_ct_series(study / "a", "Chest CT", 3)
    write_ct_series(study / "b", "Abdomen CT", 4)

    layers = viewer.open(study, plugin=PLUGIN)

    assert sorted(layer.name for layer in layers) == ["CT #3 Chest CT", "CT #4 Abdomen CT"]
    volumes = {v.display_name(): v for v in load_scans(study).volumes}
    for layer in layers:
        np.testing.assert_allclose(layer.affine.affine_matrix, volumes[layer.name].affine)
        assert layer.contrast_limits == pytest.approx(
            [WINDOW[0] - WINDOW[1] / 2, WINDOW[0] + WINDOW[1] / 2]
        )
    assert _severities(notifications) == []


def test_a_folder_opens_its_nifti_files_beside_its_dicom_series(
    viewer: ViewerModel, tmp_path: Path, mr_nifti: Path, notifications: list[Notification]
) -> None:
    study = tmp_path / PATIENT
    write_ct_series(study / "ct", "Chest CT", 3)
    (study / "mr").mkdir()
    mr_nifti.rename(study / "mr" / f"{PATIENT}.nii.gz")

    layers = viewer.open(study, plugin=PLUGIN)

    ct, mr = layers
    assert ct.name == "CT #3 Chest CT" and "DOE" not in mr.name
    assert_same_scan(layer_to_volume(mr), load_nifti(study / "mr" / f"{PATIENT}.nii.gz"))
    assert _severities(notifications) == []


def test_no_patient_identifier_reaches_a_layer(viewer: ViewerModel, ct_series: DicomSeries) -> None:

    (layer,) = viewer.open(ct_series.folder, plugin=PLUGIN)

    exposed = f"{layer.name} {layer.metadata!r} {layer.metadata['volume'].metadata!r}"
    for secret in (PATIENT_NAME, "Doe", "Jane", PATIENT_ID):
        assert secret not in exposed


def test_marker_voxel_lands_at_its_dicom_position_in_world_mm(
    viewer: ViewerModel, ct_series: DicomSeries
) -> None:
    """End to end: files on disk -> napari world coordinates in mm, checked against the IPP."""

    (layer,) = viewer.open(ct_series.folder, plugin=PLUGIN)

    index = np.unravel_index(np.argmax(layer.data), layer.data.shape)
    assert layer.data[index] == MARKER_HU
    translation = np.eye(4)
    translation[:3, 3] = ct_series.marker_lps
    expected_world = lps_to_world(translation)[:3, 3]  # (I, P, L) = (-S, P, L)
    np.testing.assert_allclose(layer.data_to_world(index), expected_world, atol=1e-4)


def test_nifti_opens_with_its_geometry(viewer: ViewerModel, mr_nifti: Path) -> None:

    (layer,) = viewer.open(mr_nifti, plugin=PLUGIN)

    volume = load_nifti(mr_nifti)
    assert_same_scan(layer_to_volume(layer), volume)
    low, high = np.percentile(volume.voxels, [1, 99.5])
    assert layer.contrast_limits == pytest.approx([low, high])


def test_bad_file_is_skipped_with_a_warning(
    viewer: ViewerModel, ct_series: DicomSeries, notifications: list[Notification]
) -> None:
    junk = ct_series.folder / f"{PATIENT}.dcm"  # names of inputs may be patient names
    junk.write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 50)

    layers = viewer.open(ct_series.folder, plugin=PLUGIN)

    assert [layer.name for layer in layers] == ["CT #3 Chest CT"]
    assert _severities(notifications) == [NotificationSeverity.WARNING]
    place = file_positions(ct_series.folder)[junk]
    assert f"a file of <input 1> was skipped: file {place}: " in notifications[0].message
    assert "DOE" not in notifications[0].message


def test_repaired_geometry_is_reported(
    viewer: ViewerModel, ct_series: DicomSeries, notifications: list[Notification]
) -> None:
    (ct_series.folder / "slice_002.dcm").unlink()  # a gap the loader fills

    (layer,) = viewer.open(ct_series.folder, plugin=PLUGIN)

    assert layer.data.shape[0] == 6
    assert _severities(notifications) == [NotificationSeverity.WARNING]
    assert "CT #3 Chest CT: 1 slice(s) missing" in notifications[0].message


@pytest.mark.parametrize("content", [None, b"not a scan"], ids=["empty folder", "junk file"])
def test_nothing_readable_is_an_error_notification(
    viewer: ViewerModel, tmp_path: Path, notifications: list[Notification], content: bytes | None
) -> None:
    folder = tmp_path / "nothing"
    folder.mkdir()
    if content is not None:
        (folder / "notes.dcm").write_bytes(content)

    layers = viewer.open(folder, plugin=PLUGIN)

    assert layers == []
    assert len(viewer.layers) == 0
    assert _severities(notifications) == [NotificationSeverity.ERROR]
    assert "No scan could be read" in notifications[0].message


def test_truncated_nifti_is_an_error_notification(
    viewer: ViewerModel, tmp_path: Path, notifications: list[Notification]
) -> None:
    path = tmp_path / PATIENT / f"{PATIENT}.nii.gz"
    path.parent.mkdir()
    path.write_bytes(b"\x1f\x8b not really gzip")

    assert viewer.open(path, plugin=PLUGIN) == []
    assert _severities(notifications) == [NotificationSeverity.ERROR]
    assert "<input 1>: not a readable NIfTI file" in notifications[0].message
    assert "DOE" not in notifications[0].message


def test_list_of_folders_reads_each(viewer: ViewerModel, tmp_path: Path) -> None:
    head = write_ct_series(tmp_path / "head", "Head CT", 1)
    neck = write_ct_series(tmp_path / "neck", "Neck CT", 2)

    layers = viewer.open([head.folder, neck.folder], plugin=PLUGIN, stack=True)

    assert sorted(layer.name for layer in layers) == ["CT #1 Head CT", "CT #2 Neck CT"]
