"""One scan classified and explained: the bundle, the prediction and its saliency map."""

from __future__ import annotations

import os
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_scan_classifier.errors import (
    InvalidInputError,
)
from napari_scan_classifier.inference import Cancel, Prediction, Progress, Reporter, classify
from napari_scan_classifier.models import Bundle, load_bundle
from napari_scan_classifier.models.bundle import METADATA_FILE
from napari_scan_classifier.models.bundled import load_default_bundle, named_bundle_path
from napari_scan_classifier.results.constants import (
    DEFAULT_PASSES,
    SALIENCY_METHODS,
    SALIENCY_TITLES,
)
from napari_scan_classifier.results.report import json_safe
from napari_scan_classifier.saliency import SaliencyMap, saliency_map
from napari_scan_classifier.volume import Volume


@dataclass
class ScanResult:
    """One scan's prediction and, unless the method was ``"none"``, its saliency map."""

    prediction: Prediction
    saliency: SaliencyMap | None = None
    saliency_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON types only (NaN becomes None): the prediction plus the saliency summary."""
        data = self.prediction.to_dict()
        data["saliency"] = None
        if self.saliency is not None:
            data["timings"]["saliency"] = self.saliency_seconds
            faithfulness = self.saliency.faithfulness
            data["saliency"] = {
                "method": self.saliency.method,
                "layer": self.saliency.layer,
                "target_class": self.saliency.target_class,
                "faithfulness": None if faithfulness is None else faithfulness.to_dict(),
                "instead_of": [dict(failed) for failed in self.saliency.instead_of],
            }
        return json_safe(data)


def resolve_bundle(path: str | os.PathLike[str] | None) -> Bundle:
    """The bundle at ``path`` (validated): a folder, its bundle.json (what a file picker gives)
    or a .zip; a shipped model by its name (``"demo_ct_lesion"``) unless a folder of that name
    exists here; the bundled model for ``None`` or ``""``."""
    if path is None or str(path) == "":
        return load_default_bundle()
    source = Path(path).expanduser()
    shipped = named_bundle_path(str(path))
    if shipped is not None and not source.exists():
        return load_bundle(shipped)
    return load_bundle(source.parent if source.name == METADATA_FILE else source)


def predict(
    volumes: Sequence[Volume],
    bundle: Bundle,
    passes: int = DEFAULT_PASSES,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> list[Prediction]:
    """Classify ``volumes`` in one batch; ``passes`` MC-dropout samples for the uncertainty
    (0: none). A modality mismatch is reported in each Prediction, not as a Python warning."""
    method = "mc_dropout" if passes > 0 else "none"
    with warnings.catch_warnings():  # classify warns at this call site (stacklevel 2)
        warnings.filterwarnings("ignore", category=UserWarning, module=re.escape(__name__))
        result = classify(
            list(volumes),
            bundle,
            uncertainty_passes=max(passes, 1),
            method=method,
            progress=progress,
            cancel=cancel,
        )
    return result  # type: ignore[return-value]  # a list in, a list out


def explain(
    volume: Volume,
    bundle: Bundle,
    method: str,
    target_class: str,
    *,
    faithfulness: bool = False,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> SaliencyMap | None:
    """The ``method`` saliency map of ``target_class`` on ``volume``'s grid (None for "none";
    "default": the bundle's own)."""
    if method not in SALIENCY_METHODS:
        raise ValueError(f"saliency method must be one of {SALIENCY_METHODS}, got {method!r}")
    if method == "none":
        return None
    Reporter(1, progress, cancel, job="saliency")(f"{SALIENCY_TITLES[method]} map")
    return saliency_map(
        volume,
        bundle,
        None if method == "default" else method,
        target_class,
        faithfulness=faithfulness,
        progress=progress,
        cancel=cancel,
    )


def classify_scan(
    volume: Volume,
    bundle: Bundle,
    *,
    saliency: str = "default",
    passes: int = DEFAULT_PASSES,
    faithfulness: bool = False,
    saliency_class: str | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> ScanResult:
    """Classify one scan and explain its predicted class (or ``saliency_class``, one of the
    model's classes): what the widget and the demo show."""
    check_saliency_class(bundle, saliency_class)
    (prediction,) = predict([volume], bundle, passes, progress, cancel)
    return _explained(
        volume, bundle, prediction, saliency, faithfulness, saliency_class, progress, cancel
    )


def explain_prediction(
    volume: Volume,
    bundle: Bundle,
    prediction: Prediction,
    *,
    method: str = "default",
    faithfulness: bool = False,
    saliency_class: str | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> ScanResult:
    """Explain a prediction already made, for its predicted class or ``saliency_class``: another
    class's map without classifying the scan again."""
    check_saliency_class(bundle, saliency_class)
    return _explained(
        volume, bundle, prediction, method, faithfulness, saliency_class, progress, cancel
    )


def check_saliency_class(bundle: Bundle, saliency_class: str | None) -> None:
    """Refuse, before any work, a class to explain that the model does not have."""
    classes = bundle.metadata.classes
    if saliency_class is not None and saliency_class not in classes:
        listing = ", ".join(f"'{name}'" for name in classes)
        raise InvalidInputError(
            f"The class to explain, '{saliency_class}', is not one of the model's classes "
            f"({listing})"
        )


def _explained(
    volume: Volume,
    bundle: Bundle,
    prediction: Prediction,
    method: str,
    faithfulness: bool,
    saliency_class: str | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> ScanResult:
    start = time.perf_counter()
    saliency = explain(
        volume,
        bundle,
        method,
        saliency_class or prediction.predicted_class,
        faithfulness=faithfulness,
        progress=progress,
        cancel=cancel,
    )
    return ScanResult(prediction, saliency, time.perf_counter() - start)


# ------------------------------------------------------------------------- batches of files
