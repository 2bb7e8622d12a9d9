"""Classification results as DICOM objects that go back into the archive beside the images.

Two objects per classified series, both in the source study (same patient and study identifiers,
as DICOM requires) and each in a new series whose description names the model:

- a Comprehensive 3D SR holding a TID 1500 measurement report: the predicted class, each class's
  probability and spread, the uncertainty, the out-of-distribution verdict where the result has
  one, and the model's name, version and SHA-256; its evidence lists the source series;
- the saliency map as a Parametric Map on the scan's own grid (one float frame per slice, each
  placed with the slice's position, orientation and spacing in mm).

Built with highdicom; :func:`read_report` turns a stored report back into plain values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from napari_scan_classifier import __version__
from napari_scan_classifier.choice import Chooser, is_auto
from napari_scan_classifier.errors import DicomWebError
from napari_scan_classifier.io.dicom_write import stack_geometry
from napari_scan_classifier.io.dicomweb import DicomWebServer, DicomWebSource
from napari_scan_classifier.models import Bundle
from napari_scan_classifier.results import ScanResult, saliency_title
from napari_scan_classifier.volume import Volume

MANUFACTURER = "napari-scan-classifier"
SCHEME = "99NSC"  # private coding scheme for this plugin's concepts and class names
REPORT_SERIES_NUMBER = 7701
MAP_SERIES_NUMBER = 7702
_UNITLESS = hd.sr.CodedConcept("1", "UCUM", "no units")
_PREDICTED = hd.sr.CodedConcept("predicted-class", SCHEME, "Predicted class")
_OOD = hd.sr.CodedConcept("ood-verdict", SCHEME, "Out-of-distribution verdict")
_PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure")
_SCALARS = {
    "predictive_entropy": ("entropy", "Predictive entropy"),
    "mutual_information": ("mutual-info", "Mutual information"),
}


@dataclass(frozen=True)
class SentResults:
    """What was stored: SOP instance UIDs of the report and of the map (None without one)."""

    report_uid: str
    map_uid: str | None


def model_hash(bundle: Bundle) -> str:
    """SHA-256 of the model file (the bundle's .zip, or model.keras in its folder); of the
    weights for a bundle that was never saved."""
    digest = hashlib.sha256()
    path = bundle.path
    file = None if path is None else path if path.is_file() else path / "model.keras"
    if file is not None and file.is_file():
        with file.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    else:
        for weights in bundle.model.get_weights():
            digest.update(np.ascontiguousarray(weights).tobytes())
    return digest.hexdigest()


def series_description(bundle: Bundle) -> str:
    """``"scan-classifier: demo_ct_lesion v3"`` (DICOM allows 64 characters)."""
    meta = bundle.metadata
    return f"scan-classifier: {meta.name} v{meta.version}"[:64]


def _concept(code: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(code, SCHEME, meaning)


def _measurements(result: Mapping[str, Any]) -> list[hd.sr.Measurement]:
    std = (result.get("uncertainty") or {}).get("std") or {}
    items = []
    for name, p in result["probabilities"].items():
        items.append((f"p-{name}", f"Probability of {name}", p))
        items.append((f"sd-{name}", f"SD of probability of {name}", std.get(name)))
    uncertainty = result.get("uncertainty") or {}
    items += [(code, meaning, uncertainty.get(key)) for key, (code, meaning) in _SCALARS.items()]
    return [
        hd.sr.Measurement(name=_concept(code, meaning), value=float(value), unit=_UNITLESS)
        for code, meaning, value in items
        if value is not None and np.isfinite(value)
    ]


def _ood_verdict(result: Mapping[str, Any]) -> str | None:
    ood = result.get("ood")
    if ood is None:
        return None
    if isinstance(ood, Mapping):
        verdict = ood.get("status") or ood.get("verdict") or ood.get("label")
        if verdict is None and "in_distribution" in ood:
            verdict = "in distribution" if ood["in_distribution"] else "out of distribution"
        return None if verdict is None else str(verdict)
    return str(ood)


def _evaluations(result: Mapping[str, Any]) -> list[hd.sr.QualitativeEvaluation]:
    predicted = result["predicted_class"]
    evaluations = [hd.sr.QualitativeEvaluation(_PREDICTED, _concept(predicted, predicted))]
    verdict = _ood_verdict(result)
    if verdict:
        evaluations.append(hd.sr.QualitativeEvaluation(_OOD, _concept(verdict, verdict)))
    return evaluations


def structured_report(
    result: Mapping[str, Any],
    sources: Sequence[Dataset],
    bundle: Bundle,
    *,
    digest: str | None = None,
) -> Dataset:
    """A Comprehensive 3D SR (TID 1500) of one scan's ``result`` (``ScanResult.to_dict()``),
    in the study of ``sources`` (the classified series' headers), referencing them."""
    meta = bundle.metadata
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name=MANUFACTURER, model_name=f"{meta.name} v{meta.version}"
        ),
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(), identifier="scan classification"
        ),
        algorithm_id=hd.sr.AlgorithmIdentification(
            name=meta.name,
            version=str(meta.version),
            parameters=[f"sha256 {digest or model_hash(bundle)}"],
        ),
        measurements=_measurements(result),
        qualitative_evaluations=_evaluations(result),
    )
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=_PROCEDURE,
        imaging_measurements=[group],
        referenced_images=list(sources),
    )
    return hd.sr.Comprehensive3DSR(
        evidence=list(sources),
        content=content,
        series_instance_uid=generate_uid(),
        series_number=REPORT_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        series_description=series_description(bundle),
        is_complete=True,
    )


def saliency_map(
    volume: Volume,
    values: np.ndarray,
    sources: Sequence[Dataset],
    bundle: Bundle,
    *,
    title: str,
) -> Dataset:
    """``values`` (on ``volume``'s grid) as a float Parametric Map: frame k lies exactly where
    the scan's slice k lies (position, orientation and spacing from the volume's affine)."""
    values = np.asarray(values, dtype=np.float32)
    if values.shape != volume.shape or values.ndim != 3:
        raise ValueError(f"the map {values.shape} must match the 3D scan {volume.shape}")
    geometry = stack_geometry(volume.affine)
    step = float(np.linalg.norm(geometry.step))
    low, high = float(values.min()), float(values.max())
    meta = bundle.metadata
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="saliency",
        lut_explanation=title[:64],
        unit=_UNITLESS,
        value_range=(low, high if high > low else low + 1.0),
        slope=1.0,
        intercept=0.0,
    )
    pm = hd.pm.ParametricMap(
        source_images=list(sources),
        pixel_array=values,
        series_instance_uid=generate_uid(),
        series_number=MAP_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=f"{meta.name} v{meta.version}"[:64],
        software_versions=__version__,
        device_serial_number="none",
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[
            hd.VOILUTTransformation(window_center=(low + high) / 2, window_width=high - low or 1.0)
        ],
        pixel_measures=hd.PixelMeasuresSequence(
            pixel_spacing=geometry.pixel_spacing,
            slice_thickness=step,
            spacing_between_slices=step,
        ),
        plane_orientation=hd.PlaneOrientationSequence(
            coordinate_system="PATIENT", image_orientation=geometry.orientation
        ),
        plane_positions=[
            hd.PlanePositionSequence(
                coordinate_system="PATIENT", image_position=geometry.position(k)
            )
            for k in range(values.shape[0])
        ],
        content_description=title[:64],
        content_label="SALIENCY",
    )
    pm.SeriesDescription = f"{series_description(bundle)} {title}"[:64]
    return pm


def _matching(headers: Sequence[Dataset], volume: Volume) -> list[Dataset]:
    """The instances of the series on the volume's pixel grid (a series can hold localizers)."""
    rows, cols = volume.shape[-2:]
    same = [h for h in headers if (h.get("Rows"), h.get("Columns")) == (rows, cols)]
    return same or list(headers)


def send_results(
    server: DicomWebServer,
    source: DicomWebSource,
    volume: Volume,
    result: ScanResult,
    bundle: Bundle,
) -> SentResults:
    """Store the report and (where ``result`` has one) the saliency map of a scan classified from
    the series ``source``."""
    if source.series_uid is None:
        raise DicomWebError("results go back to one series: give a series address, not a study")
    headers = _matching(server.series_headers(source.study_uid, source.series_uid), volume)
    for header in headers:
        for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            if keyword in header:
                del header[keyword]
    digest = model_hash(bundle)
    summary = result.to_dict()
    objects = [structured_report(summary, headers, bundle, digest=digest)]
    saliency = result.saliency
    if saliency is not None and saliency.values.ndim == 3:
        title = saliency_title(summary["saliency"])
        objects.append(saliency_map(volume, saliency.values, headers, bundle, title=title))
    server.store(objects)
    return SentResults(
        str(objects[0].SOPInstanceUID),
        str(objects[1].SOPInstanceUID) if len(objects) > 1 else None,
    )


def store_results_hook(
    paths: Sequence[str], model: str | None
) -> tuple[list[str], Bundle | Chooser, Callable[[int, Volume, ScanResult], None]]:
    """For ``classify --store-results``: every address expanded to its series (results go back
    per series), the model (a Chooser for ``"auto"``: each scan chooses), and the callback that
    sends each scan's results where it came from."""
    from napari_scan_classifier.io.dicomweb import Credentials, is_dicomweb_url
    from napari_scan_classifier.results import resolve_bundle

    local = [p for p in paths if not is_dicomweb_url(p)]
    if local:
        raise DicomWebError(
            f"--store-results sends results back to a DICOMweb server, but {len(local)} of the "
            "inputs are local files or folders"
        )
    credentials = Credentials.from_env()
    series: list[tuple[DicomWebServer, DicomWebSource]] = []
    for path in paths:
        source = DicomWebSource.parse(path)
        server = DicomWebServer(source.base_url, credentials)
        series += [
            (server, DicomWebSource(source.base_url, s.study_uid, s.series_uid))
            for s in server.series_of(source)
        ]
    given = Chooser() if is_auto(model) else resolve_bundle(model)

    def send(number: int, volume: Volume, result: ScanResult) -> None:
        server, source = series[number - 1]
        bundle = given if isinstance(given, Bundle) else _used(given, result)
        sent = send_results(server, source, volume, result, bundle)
        stored = "a report and a saliency map" if sent.map_uid else "a report"
        print(f"stored {stored} on the DICOMweb server ({series_description(bundle)})", flush=True)

    return [source.url for _, source in series], given, send


def _used(chooser: Chooser, result: ScanResult) -> Bundle:
    """The bundle the scan chose (loaded once, by the chooser)."""
    name = result.prediction.model_name
    return chooser.bundle(next(m for m in chooser.models if m.name == name))


def read_report(report: Dataset) -> dict[str, Any]:
    """The values of a stored report, by concept name: ``{"Predicted class": "lesion",
    "Probability of lesion": 0.83, ...}`` (model name and version under ``"Algorithm Name"`` and
    ``"Algorithm Version"``)."""
    values: dict[str, Any] = {}
    _collect(report.get("ContentSequence", []), values)
    return values


def _collect(items: Sequence[Dataset], values: dict[str, Any]) -> None:
    for item in items:
        name = item.ConceptNameCodeSequence[0].CodeMeaning
        kind = item.ValueType
        if kind == "NUM" and item.get("MeasuredValueSequence"):
            values[name] = float(item.MeasuredValueSequence[0].NumericValue)
        elif kind == "CODE":
            values[name] = item.ConceptCodeSequence[0].CodeMeaning
        elif kind in ("TEXT", "UIDREF"):
            values.setdefault(name, item.get("TextValue", item.get("UID")))
        _collect(item.get("ContentSequence", []), values)


__all__ = [
    "SentResults",
    "model_hash",
    "read_report",
    "saliency_map",
    "send_results",
    "series_description",
    "store_results_hook",
    "structured_report",
]
