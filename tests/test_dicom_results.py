"""Results as DICOM, without a server: the SR holds every value of the result (the
out-of-distribution verdict too) and survives a write and read; the Parametric Map lies on the
scan's slices; the model hash is the model file's."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from model_fixtures import tiny_bundle

from napari_scan_classifier.dicom_results import (
    model_hash,
    read_report,
    saliency_map,
    series_description,
    structured_report,
)
from napari_scan_classifier.io import load_scans
from napari_scan_classifier.io.dicom_write import write_series
from napari_scan_classifier.models import load_bundle, save_bundle
from napari_scan_classifier.phantoms import make_ct_phantom
from napari_scan_classifier.volume import world_to_lps

RESULT = {
    "predicted_class": "lesion",
    "probabilities": {"normal": 0.125, "lesion": 0.875},
    "uncertainty": {
        "method": "mc_dropout",
        "passes": 5,
        "std": {"normal": 0.03125, "lesion": 0.03125},
        "predictive_entropy": 0.375,
        "mutual_information": 0.0625,
    },
    "ood": {"status": "out of distribution", "score": 7.5},
}


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[pydicom.Dataset], Path]:
    folder = tmp_path_factory.mktemp("ct")
    volume = make_ct_phantom(1, shape=(6, 20, 18), spacing=(4.0, 2.0, 2.5)).volume
    paths = write_series(volume, folder, patient_name="DOE^JOHN", series_description="Head")
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths], folder


def _round_trip(ds: pydicom.Dataset) -> pydicom.Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def test_the_report_holds_every_value_and_references_the_series(series) -> None:
    headers, _ = series
    bundle = tiny_bundle()

    report = _round_trip(structured_report(RESULT, headers, bundle, digest="ab" * 32))

    values = read_report(report)
    assert values["Predicted class"] == "lesion"
    assert values["Out-of-distribution verdict"] == "out of distribution"
    assert values["Probability of normal"] == 0.125 and values["Probability of lesion"] == 0.875
    assert values["SD of probability of lesion"] == 0.03125
    assert values["Predictive entropy"] == 0.375 and values["Mutual information"] == 0.0625
    assert values["Algorithm Parameters"] == "sha256 " + "ab" * 32
    assert (
        report.SeriesDescription == series_description(bundle) == "scan-classifier: sphere-test v1"
    )
    assert (report.PatientName, report.StudyInstanceUID) == (
        "DOE^JOHN",
        headers[0].StudyInstanceUID,
    )
    (evidence,) = report.CurrentRequestedProcedureEvidenceSequence
    assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == headers[0].SeriesInstanceUID


def test_a_result_without_a_verdict_has_no_verdict_item(series) -> None:
    headers, _ = series
    result = {k: v for k, v in RESULT.items() if k != "ood"}

    values = read_report(structured_report(result, headers, tiny_bundle(), digest="0" * 64))

    assert "Out-of-distribution verdict" not in values
    assert values["Predicted class"] == "lesion"


def test_the_map_lies_on_the_scan_slices(series) -> None:
    headers, folder = series
    (volume,) = load_scans(folder).volumes
    values = np.random.default_rng(0).random(volume.shape).astype(np.float32)

    pm = _round_trip(saliency_map(volume, values, headers, tiny_bundle(), title="Grad-CAM (x)"))

    positions = {
        tuple(float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient): k
        for k, f in enumerate(pm.PerFrameFunctionalGroupsSequence)
    }
    for header in headers:
        position = tuple(float(v) for v in header.ImagePositionPatient)
        frame = positions[position]
        slice_index = _slice_at(position, volume)
        np.testing.assert_array_equal(pm.pixel_array[frame], values[slice_index])
    shared = pm.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [2.0, 2.5]
    assert float(shared.PixelMeasuresSequence[0].SpacingBetweenSlices) == 4.0
    with pytest.raises(ValueError, match=r"the map \(6, 20, 17\) must match the 3D scan"):
        saliency_map(volume, values[..., :17], headers, tiny_bundle(), title="x")


def _slice_at(lps: tuple[float, ...], volume) -> int:
    """The volume's slice index at an LPS point (mm)."""
    index = np.linalg.inv(world_to_lps(volume.affine)) @ np.array([*lps, 1.0])
    return int(np.rint(index[0]))


def test_the_model_hash_is_the_model_file(tmp_path: Path) -> None:
    folder = save_bundle(tiny_bundle(), tmp_path / "model")
    expected = hashlib.sha256((folder / "model.keras").read_bytes()).hexdigest()

    assert model_hash(load_bundle(folder)) == expected
    unsaved = tiny_bundle()
    assert model_hash(unsaved) == model_hash(tiny_bundle())
    unsaved.model.set_weights([w + 1 for w in unsaved.model.get_weights()])
    assert model_hash(unsaved) != model_hash(tiny_bundle())
