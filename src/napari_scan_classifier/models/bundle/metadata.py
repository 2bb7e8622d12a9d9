"""What ``bundle.json`` holds, the loaded bundle, calibrated probabilities and lineage."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import keras
import numpy as np
from scipy.special import softmax

from napari_scan_classifier.applicability import FeatureDetector
from napari_scan_classifier.errors import InvalidBundleError
from napari_scan_classifier.models.architectures import GRADCAM_LAYER
from napari_scan_classifier.models.bundle.constants import (
    FORMAT_VERSION,
    METADATA_FILE,
)
from napari_scan_classifier.models.bundle.validation import _check_metadata
from napari_scan_classifier.privacy import strip_paths


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class BundleMetadata:
    """What ``bundle.json`` holds. Checked on construction; see the field comments for meaning."""

    name: str
    version: int  # 1, 2, ...: each fine-tuning makes the next one
    classes: list[str]  # model output k is classes[k]
    modality: str  # "CT" or "MR"
    task: str  # "volume": whole scan; "region": a box around a finding
    input_shape: tuple[int, int, int]  # model grid (D, H, W), one channel
    target_spacing_mm: tuple[float, float, float] | None  # None: stretch scan/region to fit
    intensity: dict[str, Any]  # preprocess.normalise recipe
    architecture: str  # key of ARCHITECTURES that built it
    parent_version: int | None = None
    temperature: float = 1.0  # calibrated probabilities = softmax(logits / temperature + bias)
    gradcam_layer: str = GRADCAM_LAYER
    # Default saliency map: {"method", "layer", ...figures} measured on validation cases
    saliency: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)  # data summary and metrics
    # input-check ranges ("checks") and the feature detector's threshold ("detector"), see
    # applicability.py
    applicability: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=_now)  # ISO 8601
    description: str = ""  # one line, shown in the model picker
    model_card: str = ""  # intended use, data, limits (Markdown)
    # file name -> SHA-256 (hex) of every other file of the bundle, written by save_bundle; not
    # part of the model's identity (a saved copy equals the metadata it was saved from)
    files: dict[str, str] = field(default_factory=dict, compare=False)
    class_bias: list[float] = field(default_factory=list)  # per class; empty: no bias
    # how a class is called from the calibrated probabilities: {"kind": "argmax"}, or for two
    # classes {"kind": "threshold", "positive_class": ..., "threshold": ...}; plus a description
    decision_rule: dict[str, Any] = field(default_factory=lambda: {"kind": "argmax"})
    calibration: dict[str, Any] = field(default_factory=dict)  # how it was fitted, on what
    # the body region (one of REGIONS) the model is made for; None in bundles saved before it
    # was recorded (see choice.py for what stands in for it then)
    body_region: str | None = None
    # answer with the mean logits of the scan and of its left-right mirror image (inference.py)
    test_time_mirror: bool = False

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (n, classes) of volume logits (n, classes)."""
        return calibrated(logits, self.temperature, self.class_bias)

    def decide(self, probabilities: np.ndarray) -> np.ndarray:
        """Class index per row of calibrated ``probabilities`` (n, classes), by the rule."""
        p = np.asarray(probabilities, dtype=float)
        rule = self.decision_rule
        if rule["kind"] != "threshold":
            return p.argmax(axis=1)
        positive = self.classes.index(rule["positive_class"])
        return np.where(p[:, positive] >= rule["threshold"], positive, 1 - positive)

    def __post_init__(self) -> None:
        _check_metadata(self)
        # Own copies, so a derived version never shares mutable parts with its parent.
        self.classes = list(self.classes)
        self.intensity = copy.deepcopy(dict(self.intensity))
        self.training = copy.deepcopy(self.training)
        self.applicability = copy.deepcopy(dict(self.applicability))
        self.saliency = copy.deepcopy(self.saliency)
        self.input_shape = tuple(int(n) for n in self.input_shape)  # type: ignore[assignment]
        if self.target_spacing_mm is not None:
            self.target_spacing_mm = tuple(float(s) for s in self.target_spacing_mm)  # type: ignore[assignment]
        self.temperature = float(self.temperature)
        self.files = dict(self.files)
        self.class_bias = [float(b) for b in self.class_bias]
        self.decision_rule = copy.deepcopy(dict(self.decision_rule))
        self.calibration = copy.deepcopy(dict(self.calibration))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, with the format version."""
        return {"format_version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BundleMetadata:
        """Metadata from parsed ``bundle.json``; unknown keys are ignored."""
        if not isinstance(data, Mapping):
            raise InvalidBundleError(f"{METADATA_FILE} must hold a JSON object")
        if data.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
            raise InvalidBundleError(
                f"{METADATA_FILE} has format version {data.get('format_version')!r}; this "
                f"version of the plugin reads format {FORMAT_VERSION}: update the plugin"
            )
        known = {f.name for f in fields(cls)}
        required = {
            f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
        }
        missing = sorted(required - set(data))
        if missing:
            raise InvalidBundleError(f"{METADATA_FILE} lacks the field(s): {', '.join(missing)}")
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as error:
            reason = strip_paths(str(error).splitlines()[0][:200] if str(error) else "")
            raise InvalidBundleError(
                f"{METADATA_FILE} has a field of the wrong type ({reason or type(error).__name__})"
            ) from None
        except RecursionError:
            raise InvalidBundleError(f"{METADATA_FILE} is nested too deeply") from None


@dataclass
class Bundle:
    """A loaded (or about to be saved) model with its metadata; ``path`` is where it came from;
    ``detector`` is saved as DETECTOR_FILE when ``metadata.applicability`` describes it;
    ``compiled`` keeps functions of this model that a backend traced once (tracing a large model
    costs as much as several calls), so the next map reuses them."""

    metadata: BundleMetadata
    model: keras.Model
    path: Path | None = None
    detector: FeatureDetector | None = None
    compiled: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False)


def calibrated(
    logits: np.ndarray, temperature: float, bias: list[float] | tuple[float, ...] | None = None
) -> np.ndarray:
    """``softmax(logits / temperature + bias)`` row by row (no bias: plain temperature)."""
    z = np.asarray(logits, dtype=float) / float(temperature)
    if bias is not None and len(bias):
        z = z + np.asarray(bias, dtype=float)
    return softmax(z, axis=-1)


def next_version(metadata: BundleMetadata) -> int:
    """The version number a model derived from ``metadata`` gets."""
    return metadata.version + 1


def derive(metadata: BundleMetadata, **changes: Any) -> BundleMetadata:
    """Metadata for a new model made from this one: next version, this one as parent, new time."""
    lineage = {
        "version": next_version(metadata),
        "parent_version": metadata.version,
        "created": _now(),
        "files": {},  # the new version's files get their own hashes when saved
    }
    return replace(metadata, **{**lineage, **changes})
