"""Checks that a bundle's metadata, model and feature detector are sound and agree."""

from __future__ import annotations

import math
import posixpath
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

import keras

from napari_scan_classifier import limits
from napari_scan_classifier.applicability import FeatureDetector
from napari_scan_classifier.errors import InvalidBundleError
from napari_scan_classifier.models.bundle.constants import (
    BYTES_PER_GRID_VOXEL,
    DETECTOR_FILE,
    METADATA_FILE,
    MODALITIES,
    MODEL_FILE,
    REGIONS,
    TASKS,
)
from napari_scan_classifier.preprocess import validate_intensity

_SHA256 = re.compile(r"[0-9a-f]{64}")

if TYPE_CHECKING:
    from napari_scan_classifier.models.bundle.metadata import BundleMetadata


def check_model(metadata: BundleMetadata, model: keras.Model) -> None:
    """Raise InvalidBundleError unless ``model`` fits ``metadata`` (input grid, classes, layers)."""
    if len(model.inputs) != 1:
        raise InvalidBundleError(f"the model has {len(model.inputs)} inputs; a scan model has one")
    expected = (*metadata.input_shape, 1)
    actual = tuple(model.inputs[0].shape[1:])
    if actual != expected:
        raise InvalidBundleError(
            f"the model takes input of shape {actual} but {METADATA_FILE} says "
            f"input_shape {metadata.input_shape} (plus one channel)"
        )
    outputs = model.output
    if not isinstance(outputs, dict) or "volume" not in outputs:
        raise InvalidBundleError("the model must output a dict of logits with a 'volume' entry")
    for key, tensor in outputs.items():
        if tensor.shape[-1] != len(metadata.classes):
            raise InvalidBundleError(
                f"the model's '{key}' output has {tensor.shape[-1]} units but {METADATA_FILE} "
                f"lists {len(metadata.classes)} classes {metadata.classes}"
            )
    try:
        model.get_layer(metadata.gradcam_layer)
    except ValueError:
        raise InvalidBundleError(
            f"the model has no layer '{metadata.gradcam_layer}' (gradcam_layer)"
        ) from None


def check_detector(metadata: BundleMetadata, detector: FeatureDetector | None) -> None:
    """Raise InvalidBundleError unless the detector and ``applicability.detector`` agree."""
    info = metadata.applicability.get("detector")
    if not info:
        if detector is not None:
            raise InvalidBundleError(
                f"the bundle has a feature detector but {METADATA_FILE} does not describe it"
            )
        return
    if detector is None:
        raise InvalidBundleError(
            f"{METADATA_FILE} names an applicability detector but the bundle has no {DETECTOR_FILE}"
        )
    n_classes, n_features = detector.means.shape
    if n_features != info.get("features") or n_classes > len(metadata.classes):
        raise InvalidBundleError(
            f"{DETECTOR_FILE} holds {n_classes} class means of {n_features} features; "
            f"{METADATA_FILE} says {info.get('features')} features and "
            f"{len(metadata.classes)} classes"
        )


def _check_metadata(m: BundleMetadata) -> None:
    """Field-by-field checks with messages naming the field."""
    _expect(_is_text(m.name), "name must be a non-empty text")
    _expect(_is_int(m.version) and m.version >= 1, "version must be a whole number >= 1")
    _expect(
        m.parent_version is None or (_is_int(m.parent_version) and m.parent_version >= 1),
        "parent_version must be a whole number >= 1, or null",
    )
    _expect(
        isinstance(m.classes, (list, tuple))
        and len(m.classes) >= 2
        and all(_is_text(c) for c in m.classes)
        and len(set(m.classes)) == len(m.classes),
        "classes must be a list of at least two different names",
    )
    _expect(m.modality in MODALITIES, f"modality must be one of {MODALITIES}")
    _expect(m.task in TASKS, f"task must be one of {TASKS}")
    _expect(
        m.body_region is None or m.body_region in REGIONS,
        f"body_region must be one of {REGIONS}, or null",
    )
    _expect(_is_triple(m.input_shape, _is_int), "input_shape must be three whole numbers (D, H, W)")
    voxels = math.prod(m.input_shape)
    limits.check_memory(
        voxels * BYTES_PER_GRID_VOXEL,
        f"{METADATA_FILE}: the input grid {' x '.join(map(str, m.input_shape))}",
        InvalidBundleError,
    )
    _expect(
        m.target_spacing_mm is None or _is_triple(m.target_spacing_mm, _is_number),
        "target_spacing_mm must be three positive numbers (z, y, x) in mm, or null",
    )
    _check_intensity(m.intensity, m.modality)
    _expect(_is_text(m.architecture), "architecture must be a non-empty text")
    _expect(
        _is_number(m.temperature) and m.temperature > 0, "temperature must be a positive number"
    )
    _expect(_is_text(m.gradcam_layer), "gradcam_layer must be a layer name")
    _expect(isinstance(m.test_time_mirror, bool), "test_time_mirror must be true or false")
    _expect(isinstance(m.training, dict), "training must be a JSON object")
    _check_applicability(m.applicability)
    _expect(
        isinstance(m.saliency, dict) and _is_text(m.saliency.get("method", "-")),
        "saliency must be a JSON object naming its method",
    )
    _expect(_is_iso_time(m.created), "created must be an ISO 8601 date and time")
    _expect(isinstance(m.description, str), "description must be text")
    _expect(isinstance(m.model_card, str), "model_card must be text")
    _check_files(m.files)
    _expect(
        isinstance(m.class_bias, (list, tuple))
        and len(m.class_bias) in (0, len(m.classes))
        and all(_is_number(b) for b in m.class_bias),
        "class_bias must list one number per class, or be empty",
    )
    _check_decision_rule(m.decision_rule, m.classes)
    _expect(isinstance(m.calibration, dict), "calibration must be a JSON object")


def _check_decision_rule(rule: Any, classes: list[str]) -> None:
    _expect(
        isinstance(rule, dict) and rule.get("kind") in ("argmax", "threshold"),
        "decision_rule must be an object whose kind is 'argmax' or 'threshold'",
    )
    if rule["kind"] == "threshold":
        threshold = rule.get("threshold")
        _expect(
            len(classes) == 2
            and rule.get("positive_class") in classes
            and _is_number(threshold)
            and 0 < threshold < 1,
            "decision_rule: a threshold needs two classes, a positive_class among them and a "
            "threshold between 0 and 1",
        )


def _check_files(files: Any) -> None:
    _expect(
        isinstance(files, dict)
        and all(
            isinstance(name, str)
            and name not in ("", ".", "..", METADATA_FILE)
            and name == posixpath.basename(name)
            and "\\" not in name
            and isinstance(digest, str)
            and _SHA256.fullmatch(digest)
            for name, digest in files.items()
        ),
        "files must map plain file names to SHA-256 digests (64 lowercase hex digits)",
    )
    _expect(not files or MODEL_FILE in files, f"files must list {MODEL_FILE}")


def _check_intensity(intensity: Any, modality: str) -> None:
    try:
        validate_intensity(intensity)
    except ValueError as error:
        raise InvalidBundleError(f"intensity: {error}") from None
    is_window = intensity["kind"] == "ct_window"
    _expect(
        is_window == (modality == "CT"),
        "intensity: CT models use a 'ct_window' (Hounsfield units); MR models use 'zscore' "
        "or 'percentile'",
    )


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidBundleError(f"{METADATA_FILE}: {message}")


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_triple(value: Any, kind: Any) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and all(kind(v) and v > 0 for v in value)
    )


def _is_iso_time(value: Any) -> bool:
    try:
        datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return False
    return True


def _check_applicability(applicability: Any) -> None:
    _expect(isinstance(applicability, dict), "applicability must be a JSON object")
    detector = applicability.get("detector")
    _expect(
        detector is None
        or (
            isinstance(detector, dict)
            and _is_number(detector.get("threshold"))
            and _is_int(detector.get("features"))
            and _is_number(detector.get("false_abstention_rate"))
        ),
        "applicability.detector must give a threshold, the number of features and the "
        "false-abstention rate",
    )
