"""What of a label, prediction and metadata a case may keep: checked values, no identifiers."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from napari_scan_classifier.errors import CaseLibraryError

_CODE = re.compile(r"[A-Za-z0-9_]{1,16}")  # DICOM-style codes: modality, units
_MAX_LABEL_CHARS = 128
_MAX_PREDICTION_BYTES = 64 * 1024
# Numeric acquisition values worth keeping with a case; everything else in Volume.metadata is
# either free text (series_description), a key into the source (series_key) or not needed.
_NUMERIC_METADATA = (
    "spacing",
    "slice_thickness",
    "window_center",
    "window_width",
    "magnetic_field_strength",
)


def clean_label(label: object) -> str:
    """A class label as stored: stripped, non-empty, printable, reasonably short."""
    if not isinstance(label, str) or not label.strip():
        raise CaseLibraryError("A case needs a class label (e.g. 'lesion'); the label is empty.")
    label = label.strip()
    if len(label) > _MAX_LABEL_CHARS or not label.isprintable():
        raise CaseLibraryError(
            f"A class label must be printable text of at most {_MAX_LABEL_CHARS} characters."
        )
    return label


def case_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a Volume's (already safe) metadata a case keeps: numbers and a unit code."""
    kept: dict[str, Any] = {}
    for key in _NUMERIC_METADATA:
        value = _finite_numbers(metadata.get(key))
        if value is not None:
            kept[key] = value
    units = metadata.get("units")
    if isinstance(units, str) and _CODE.fullmatch(units):
        kept["units"] = units
    return kept


def _clean_prediction(prediction: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A JSON round trip: numpy numbers become floats, NaN and non-JSON values are refused."""
    if prediction is None:
        return None
    if not isinstance(prediction, Mapping):
        raise CaseLibraryError("A prediction must be a dict (probabilities by class, model).")
    try:
        text = json.dumps(dict(prediction), allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as error:
        raise CaseLibraryError(f"The prediction cannot be stored as JSON: {error}") from error
    except RecursionError:
        raise CaseLibraryError("The prediction is nested too deeply to store.") from None
    if len(text) > _MAX_PREDICTION_BYTES:
        raise CaseLibraryError("The prediction is too large to store with a case.")
    return json.loads(text)


def _json_default(value: object) -> object:
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _clean_modality(modality: object) -> str:
    return modality if isinstance(modality, str) and _CODE.fullmatch(modality) else "OT"


def _finite_numbers(value: object) -> float | list[float] | None:
    """A finite number or a flat list of them (DICOM multi-values), else None."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, list | tuple):
        return _finite_number(value)
    numbers = [_finite_number(item) for item in value]
    return [n for n in numbers if n is not None] if numbers and None not in numbers else None


def _finite_number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return None
    number = float(value)
    return number if math.isfinite(number) else None
