"""A batch report and its output checked and written as JSON or CSV."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_scan_classifier import outputs
from napari_scan_classifier.errors import (
    ScanClassifierError,
)
from napari_scan_classifier.results.constants import (
    ANSWERED,
    NO_MODEL,
    OUT_OF_DISTRIBUTION,
    OUTPUT_SUFFIXES,
)


@dataclass
class BatchReport:
    """What ``classify`` on the command line found: one row per series, the files it skipped."""

    model: dict[str, Any]
    series: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    @property
    def classified(self) -> int:
        """Series the model answered for, out-of-distribution ones included."""
        return sum(row["status"] in ANSWERED for row in self.series)

    @property
    def out_of_distribution(self) -> int:
        return sum(row["status"] == OUT_OF_DISTRIBUTION for row in self.series)

    @property
    def no_model(self) -> int:
        """Series no installed model covers (when each scan chooses its model)."""
        return sum(row["status"] == NO_MODEL for row in self.series)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "series": self.series, "skipped_files": self.skipped}


def check_output(path: str | os.PathLike[str]) -> Path:
    """Refuse, before any work is done, an output of unknown format or one that cannot be
    written (its folder read-only or a file, its name too long); clears stale partial writes."""
    out = Path(path).expanduser()
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ScanClassifierError(f"{out.name}: the results file must end in .json or .csv")
    outputs.check_folder(out.parent, len(out.name), "--out")
    if out.is_dir():
        raise outputs.OutputError(f"--out: '{out.name}' is a folder, not a results file")
    outputs.clean_stale(out.parent)
    return out


def write_report(report: BatchReport, path: str | os.PathLike[str]) -> Path:
    """Write ``report`` as JSON or CSV (by the suffix), atomically."""
    out = check_output(path)
    text = to_json(report) if out.suffix.lower() == ".json" else to_csv(report)
    return outputs.write_text_atomic(out, text)


def to_json(report: BatchReport) -> str:
    return json.dumps(json_safe(report.to_dict()), indent=2, allow_nan=False) + "\n"


# CSV columns copied as they are from each series row.
_SERIES_COLUMNS = (
    "index",
    "input",
    "series",
    "series_key",
    "modality",
    "series_number",
    "description",
    "frame",
    "status",
)


def to_csv(report: BatchReport) -> str:
    """One row per series (probability and SD columns per class), then one per skipped file."""
    classes = report.model["classes"]
    columns = [
        *_SERIES_COLUMNS,
        "predicted_class",
        *(f"p_{name}" for name in classes),
        *(f"sd_{name}" for name in classes),
        "predictive_entropy",
        "mutual_information",
        "uncertainty_passes",
        "device",
        "model",
        "model_version",
        "model_sha256",
        "worker",
        "seconds",
        "saliency_file",
        "saliency_method",
        "saliency_instead_of",
        "saliency_faithfulness_passed",
        "saliency_deletion_auc",
        "saliency_insertion_auc",
        "ood_score",
        "ood_threshold",
        "ood_reasons",
        "model_choice",
        "modality_warning",
        "geometry_warnings",
        "note",
    ]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    for row in report.series:
        writer.writerow(_csv_row(row, classes))
    for skipped in report.skipped:
        writer.writerow(
            {
                "input": skipped["input"],
                "status": "skipped",
                "note": skipped["reason"],
            }
        )
    return buffer.getvalue()


def _csv_row(row: Mapping[str, Any], classes: Sequence[str]) -> dict[str, Any]:
    flat = {key: row.get(key) for key in _SERIES_COLUMNS}  # journals before "frame" lack it
    flat["geometry_warnings"] = "; ".join(row["geometry_warnings"])
    flat["note"] = row["error"] or ""
    flat["worker"] = row.get("worker") or ""  # where a cohort ran it, and with which bundle
    flat["model_sha256"] = (row.get("bundle") or {}).get("sha256", "")
    flat["model_choice"] = (row.get("model_choice") or {}).get("reason", "")
    if row["status"] not in ANSWERED:
        return flat
    uncertainty = row["uncertainty"]
    saliency = row["saliency"] or {}
    faithfulness = saliency.get("faithfulness") or {}
    ood = row.get("ood") or {}
    for name in classes:  # a model chosen by the scan may have other classes than the others
        flat[f"p_{name}"] = _fmt(row["probabilities"].get(name))
        flat[f"sd_{name}"] = _fmt(uncertainty["std"].get(name))
    flat.update(
        predicted_class=row["predicted_class"],
        predictive_entropy=_fmt(uncertainty["predictive_entropy"]),
        mutual_information=_fmt(uncertainty["mutual_information"]),
        uncertainty_passes=uncertainty["passes"] if uncertainty["method"] != "none" else 0,
        device=row["device"],
        model=row["model"]["name"],
        model_version=row["model"]["version"],
        seconds=_fmt(row["timings"]["total"] + row["timings"].get("saliency", 0.0)),
        saliency_file=saliency.get("file", ""),
        saliency_method=_saliency_method(saliency),
        saliency_instead_of="; ".join(
            f"{_saliency_method(failed)} (gap {failed['gap']:.3g})"
            for failed in saliency.get("instead_of", ())
        ),
        saliency_faithfulness_passed=_flag(faithfulness.get("passed")),
        saliency_deletion_auc=_fmt(faithfulness.get("auc_deletion")),
        saliency_insertion_auc=_fmt(faithfulness.get("auc_insertion")),
        ood_score=_fmt(ood.get("score")),
        ood_threshold=_fmt(ood.get("threshold")),
        ood_reasons="; ".join(ood.get("reasons", ())),
        modality_warning=row["modality_warning"] or "",
    )
    return flat


def _saliency_method(saliency: Mapping[str, Any]) -> str:
    """``"grad_cam gradcam_target"``: the method and, for a layer-based one, its layer."""
    return " ".join(str(part) for part in (saliency.get("method"), saliency.get("layer")) if part)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def _flag(value: bool | None) -> str:
    return "" if value is None else str(bool(value)).lower()


def json_safe(value: Any) -> Any:
    """``value`` with NumPy scalars as Python numbers and NaN/infinity as None (valid JSON)."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


# ------------------------------------------------------------------------------------- text
