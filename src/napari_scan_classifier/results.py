"""Classification results as people see them, for the command line and the napari widget alike.

One job serves both faces: classify scans (several in one batch), explain each with a saliency map
on the scan's own grid, and turn the outcome into JSON-ready dicts, CSV rows, NIfTI maps and short
text lines. Series are labelled from de-identified fields only (modality, series number,
description, the reader's hashed series key and a running index); no patient field and no file or
folder name is ever written: inputs are numbered by their position on the command line, and the
reasons files were skipped pass through :class:`~.privacy.Redactor` (third-party errors quote
paths).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from napari_scan_classifier import outputs
from napari_scan_classifier.choice import Choice, Chooser, is_auto
from napari_scan_classifier.errors import (
    InvalidInputError,
    ScanClassifierError,
    UnreadableScanError,
)
from napari_scan_classifier.inference import Cancel, Prediction, Progress, Reporter, classify
from napari_scan_classifier.limits import special_file_reason
from napari_scan_classifier.models import Bundle, load_bundle
from napari_scan_classifier.models.bundle import METADATA_FILE
from napari_scan_classifier.models.bundled import load_default_bundle, named_bundle_path
from napari_scan_classifier.privacy import Redactor, numbered
from napari_scan_classifier.saliency import TITLES, SaliencyMap, method_key, saliency_map
from napari_scan_classifier.volume import Volume

# "default": the method the bundle records as most faithful (see saliency.selection)
SALIENCY_METHODS = ("default", "gradcam", "integrated_gradients", "occlusion", "none")
SALIENCY_TITLES = {"default": "Model's default", **TITLES, "none": "None"}
UNCERTAINTY_TITLES = {"mc_dropout": "Monte Carlo dropout", "tta": "test-time augmentation"}
DEFAULT_PASSES = 10
BATCH_SIZE = 8  # scans per forward batch on the command line: bounded memory, shared overhead
OUTPUT_SUFFIXES = (".json", ".csv")
_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
OUT_OF_DISTRIBUTION = "out_of_distribution"
NO_MODEL = "no_model"  # status of a series no installed model covers (model chosen by the scan)
ANSWERED = ("classified", OUT_OF_DISTRIBUTION)  # statuses of rows that carry probabilities


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


def classify_paths(
    paths: Sequence[str | os.PathLike[str]],
    bundle: Bundle | Chooser | str | os.PathLike[str] | None,
    *,
    saliency: str = "none",
    passes: int = DEFAULT_PASSES,
    faithfulness: bool = False,
    saliency_dir: str | os.PathLike[str] | None = None,
    saliency_class: str | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    on_result: Callable[[int, Volume, ScanResult], None] | None = None,
    checkpoint: Callable[[BatchReport], None] | None = None,
) -> BatchReport:
    """Classify every series under every path with ``bundle`` (or the bundle at that path, the
    bundled one for None; ``"auto"`` or a Chooser: the model each scan chooses, see choice.py);
    maps of each series' predicted class (or of ``saliency_class``) go to ``saliency_dir`` as
    NIfTI; ``on_row`` gets each series' row as soon as it is done (a long batch shows its
    progress); ``on_result`` gets each
    classified scan with its input's position (to send results on, e.g. to a PACS);
    ``checkpoint`` the report so far after each input and series (to write it, so a late
    failure keeps what was done).

    A path that does not exist stops everything at once, before the model loads (a typo should
    not give a partial result); files or series that cannot be used are recorded and the rest go
    on. Raises UnreadableScanError when nothing at all could be classified.
    """
    missing = [
        f"input {n}"
        for n, p in enumerate(paths, start=1)
        if not _is_url(p) and not Path(p).exists()
    ]
    if missing:
        raise UnreadableScanError(f"{', '.join(missing)}: no such file or folder")
    if is_auto(bundle):
        bundle = Chooser()
    if not isinstance(bundle, Bundle | Chooser):
        bundle = resolve_bundle(bundle)
    chosen = isinstance(bundle, Chooser)
    if not chosen:
        check_saliency_class(bundle, saliency_class)
    explained = partial(
        result_row,
        saliency=saliency,
        faithfulness=faithfulness,
        saliency_dir=saliency_dir,
        saliency_class=saliency_class,
    )
    report = BatchReport(chosen_models_summary([]) if chosen else _model_summary(bundle))
    redact = Redactor(paths)
    save = checkpoint or (lambda _report: None)
    index = 0
    for number, path in enumerate(paths, start=1):
        volumes = _load(path, number, report, redact)
        save(report)
        for chunk in _chunks(volumes, BATCH_SIZE):
            for volume, (outcome, used, choice) in zip(
                chunk, _predict_chunk(chunk, bundle, passes), strict=True
            ):
                index += 1
                row, result = _row(
                    index, number, volume, outcome, used, choice, explained, saliency_class
                )
                row["geometry_warnings"] = [redact(w) for w in row["geometry_warnings"]]
                if result is not None and on_result is not None:
                    on_result(number, volume, result)
                report.series.append(row)
                if chosen:
                    report.model = chosen_models_summary(report.series)
                save(report)
                if on_row is not None:
                    on_row(row)
    if not report.classified:
        reasons = "; ".join(
            [row["error"] for row in report.series] + [s["reason"] for s in report.skipped]
        )
        raise UnreadableScanError(f"no scan could be classified ({reasons or 'nothing found'})")
    return report


def _predict_chunk(
    volumes: list[Volume], bundle: Bundle | Chooser, passes: int
) -> list[tuple[Prediction | str | None, Bundle | None, Choice | None]]:
    """Each scan's outcome, the bundle that gave it and, when the scan chose it, the choice:
    the scans that chose the same model go through it in one batch; a scan no model covers gets
    no outcome and no bundle."""
    if isinstance(bundle, Bundle):
        return [(outcome, bundle, None) for outcome in _predict_each(volumes, bundle, passes)]
    choices = [bundle.choose(volume) for volume in volumes]
    found: list[tuple[Prediction | str | None, Bundle | None, Choice | None]] = [
        (None, None, choice) for choice in choices
    ]
    for entry in {c.model for c in choices if c.model is not None}:
        positions = [i for i, c in enumerate(choices) if c.model == entry]
        used = bundle.bundle(entry)
        outcomes = _predict_each([volumes[i] for i in positions], used, passes)
        for i, outcome in zip(positions, outcomes, strict=True):
            found[i] = (outcome, used, choices[i])
    return found


def _row(
    index: int,
    number: int,
    volume: Volume,
    outcome: Prediction | str | None,
    used: Bundle | None,
    choice: Choice | None,
    explained: Callable[..., tuple[dict[str, Any], ScanResult | None]],
    saliency_class: str | None,
) -> tuple[dict[str, Any], ScanResult | None]:
    """A series' row and result from ``explained`` (:func:`result_row` with the options);
    with the model the scan chose, or why none covers it."""
    if used is None or outcome is None:
        row, result = no_model_row(index, number, volume, choice), None
    else:
        if choice is not None:  # the class to explain was not checked against this model yet
            try:
                check_saliency_class(used, saliency_class)
            except InvalidInputError as error:
                outcome = str(error)
        row, result = explained(index, number, volume, outcome, used)
    if choice is not None:
        row["model_choice"] = choice.to_dict()
    return row, result


def no_model_row(index: int, number: int, volume: Volume, choice: Choice | None) -> dict[str, Any]:
    """The row of a series no installed model covers: why, and how the scan was identified."""
    row = series_row(index, number, volume)
    row.update(status=NO_MODEL, error=choice.explanation() if choice else "no model chosen")
    return row


def chosen_models_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The report's ``model`` when each scan chose its model: the one model every answered row
    used (as for one given model), else ``"auto"`` with each model used and all their classes."""
    used: dict[tuple[str, int], dict[str, Any]] = {}
    for row in rows:
        if row["status"] in ANSWERED:
            model = {**row["model"], **(row.get("bundle") or {})}
            model["classes"] = list(row["probabilities"])
            model["modality"] = (row.get("model_choice") or {}).get("modality")
            used.setdefault((model["name"], model["version"]), model)
    models = list(used.values())
    if len(models) == 1:
        return {**models[0], "chosen_by": "the scan"}
    classes = list(dict.fromkeys(name for m in models for name in m["classes"]))
    return {"name": "auto", "chosen_by": "the scan", "models": models, "classes": classes}


def status_of(prediction: Prediction) -> str:
    """``"classified"``, or ``"out_of_distribution"`` when the scan is unlike the training data
    (its probabilities are reported all the same)."""
    return "classified" if prediction.in_distribution else OUT_OF_DISTRIBUTION


def classify_series(
    index: int,
    number: int,
    volume: Volume,
    bundle: Bundle,
    *,
    saliency: str = "none",
    passes: int = DEFAULT_PASSES,
    faithfulness: bool = False,
    saliency_dir: str | os.PathLike[str] | None = None,
    saliency_class: str | None = None,
) -> dict[str, Any]:
    """One series' row, as :func:`classify_paths` makes it, for work sent out series by series
    (a cohort): ``index`` and ``number`` as in :func:`series_row`. Its texts are not redacted
    (the caller knows the inputs)."""
    (outcome,) = _predict_each([volume], bundle, passes)
    row, _ = result_row(
        index,
        number,
        volume,
        outcome,
        bundle,
        saliency,
        faithfulness,
        saliency_dir,
        saliency_class=saliency_class,
    )
    return row


def result_row(
    index: int,
    number: int,
    volume: Volume,
    outcome: Prediction | str,
    bundle: Bundle,
    saliency: str,
    faithfulness: bool,
    saliency_dir: str | os.PathLike[str] | None,
    *,
    saliency_class: str | None = None,
) -> tuple[dict[str, Any], ScanResult | None]:
    """The series' label, then its prediction and saliency summary (the map of the predicted
    class, or of ``saliency_class``, saved into ``saliency_dir``), or the reason it could not be
    classified; and the result itself."""
    row = series_row(index, number, volume)
    if not isinstance(outcome, Prediction):
        row.update(status="failed", error=outcome)
        return row, None
    result = _explained(volume, bundle, outcome, saliency, faithfulness, saliency_class)
    row.update(status=status_of(outcome), **result.to_dict())
    row["saliency"] = _saved_map(volume, result, index, saliency_dir)
    return row, result


def _load(
    path: str | os.PathLike[str], number: int, report: BatchReport, redact: Redactor
) -> list[Volume]:
    """The volumes of one input; what was skipped is recorded by input number, names hidden."""
    from napari_scan_classifier.io import load_scans

    special = special_file_reason(Path(path))
    if special is not None:
        report.skipped.append({"input": number, "reason": special})
        return []
    try:
        loaded = load_scans(path)
    except ScanClassifierError as error:
        report.skipped.append({"input": number, "reason": redact(numbered(str(error), number))})
        return []
    for skipped in loaded.skipped:
        redact.found(skipped.local_path(), path)
    report.skipped.extend({"input": number, "reason": redact(str(s))} for s in loaded.skipped)
    return loaded.volumes


def _is_url(path: str | os.PathLike[str]) -> bool:
    return isinstance(path, str) and path.lower().startswith(("http://", "https://"))


def _chunks(items: list[Volume], size: int) -> Iterator[list[Volume]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _predict_each(volumes: list[Volume], bundle: Bundle, passes: int) -> list[Prediction | str]:
    """One batch; if a scan in it is unusable, each on its own, so the others still get a result
    (the unusable ones get the reason)."""
    try:
        return list(predict(volumes, bundle, passes))
    except InvalidInputError as error:
        if len(volumes) == 1:
            return [str(error)]
    return [outcome for volume in volumes for outcome in _predict_each([volume], bundle, passes)]


def series_row(index: int, number: int, volume: Volume) -> dict[str, Any]:
    """A series' de-identified label and geometry: ``index`` counts series over the whole run,
    ``number`` is the position of the input path on the command line."""
    meta = volume.metadata
    return {
        "index": index,
        "input": number,
        "series": series_label(index, volume),
        "series_key": meta.get("series_key"),
        "modality": volume.modality,
        "series_number": meta.get("series_number"),
        "description": volume.description,
        "shape": list(volume.shape),
        "spacing_mm": [round(s, 6) for s in volume.spacing],
        "geometry_warnings": [str(w) for w in meta.get("geometry_warnings", ())],
        "status": "",
        "error": None,
    }


def series_label(index: int, volume: Volume) -> str:
    """``"003 CT #2 Chest [1a2b3c4d5e6f]"``: index, safe header fields, hashed series key."""
    key = volume.metadata.get("series_key")
    return f"{index:03d} {volume.display_name()}" + (f" [{key}]" if key else "")


def _saved_map(
    volume: Volume, result: ScanResult, index: int, folder: str | os.PathLike[str] | None
) -> dict[str, Any] | None:
    summary = result.to_dict()["saliency"]
    if summary is None or folder is None or result.saliency is None:
        return summary
    from napari_scan_classifier.io.nifti import save_nifti

    target = _UNSAFE_FILE_CHARS.sub("_", result.saliency.target_class)
    name = f"{index:03d}_{volume.modality}_{result.saliency.method}_{target}.nii.gz"
    Path(folder).mkdir(parents=True, exist_ok=True)
    save_nifti(volume.with_voxels(result.saliency.values), Path(folder) / name)
    return {**summary, "file": name}


def _model_summary(bundle: Bundle) -> dict[str, Any]:
    meta = bundle.metadata
    return {
        "name": meta.name,
        "version": meta.version,
        "classes": list(meta.classes),
        "modality": meta.modality,
    }


# ---------------------------------------------------------------------------------- writing


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
    flat = {key: row[key] for key in _SERIES_COLUMNS}
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
        saliency_faithfulness_passed=_flag(faithfulness.get("passed")),
        saliency_deletion_auc=_fmt(faithfulness.get("auc_deletion")),
        saliency_insertion_auc=_fmt(faithfulness.get("auc_insertion")),
        ood_score=_fmt(ood.get("score")),
        ood_threshold=_fmt(ood.get("threshold")),
        ood_reasons="; ".join(ood.get("reasons", ())),
        modality_warning=row["modality_warning"] or "",
    )
    return flat


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


def probability_lines(result: Mapping[str, Any]) -> list[str]:
    """``"lesion   0.83 ± 0.04"`` per class (± the SD over the uncertainty passes)."""
    std = result["uncertainty"]["std"]
    width = max(len(name) for name in result["probabilities"])
    return [
        f"{name:<{width}}  {p:.2f} ± {std[name]:.2f}" for name, p in result["probabilities"].items()
    ]


def summary_lines(
    result: Mapping[str, Any], *, probabilities: bool = True, banner: bool = True
) -> list[str]:
    """What a person reads first: prediction, probabilities (unless a chart shows them), model,
    device, time, caveats."""
    model = result["model"]
    timings = result["timings"]
    parts = ", ".join(f"{k} {v:.2f}" for k, v in timings.items() if k != "total")
    uncertainty = result["uncertainty"]
    spread = (
        f"{uncertainty['passes']} {UNCERTAINTY_TITLES.get(uncertainty['method'], '')} passes"
        if uncertainty["method"] != "none"
        else "no uncertainty passes"
    )
    lines = [
        *(ood_lines(result) if banner else []),
        f"Predicted: {result['predicted_class']}",
        *(probability_lines(result) if probabilities else []),
        *_choice_lines(result.get("model_choice")),
        f"Model: {model['name']} v{model['version']} on {result['device']} ({spread})",
        f"Time: {timings['total'] + timings.get('saliency', 0.0):.2f} s ({parts})",
    ]
    lines += _saliency_lines(result.get("saliency"))
    if result.get("modality_warning"):
        lines.append(f"Warning: {result['modality_warning']}")
    return lines


def _choice_lines(choice: Mapping[str, Any] | None) -> list[str]:
    """Which model the scan chose and why (nothing when the model was given)."""
    if not choice:
        return []
    return [f"Chosen by the scan: {choice['reason']} ({choice['how']})"]


def ood_lines(result: Mapping[str, Any]) -> list[str]:
    """The out-of-distribution banner: a headline and one line per reason (none when the scan
    is within the training distribution)."""
    ood = result.get("ood")
    if not ood or ood["in_distribution"]:
        return []
    return [
        "OUT OF DISTRIBUTION: this scan is unlike the scans the model was trained on; "
        "do not rely on its answer",
        *(f"  - {reason}" for reason in ood["reasons"]),
    ]


def _saliency_lines(saliency: Mapping[str, Any] | None) -> list[str]:
    if not saliency:
        return []
    title = SALIENCY_TITLES.get(method_key(saliency["method"]), saliency["method"])
    layer = f" (layer {saliency['layer']})" if saliency.get("layer") else ""
    lines = [f"Saliency: {title}{layer} of '{saliency['target_class']}'"]
    check = saliency.get("faithfulness")
    if check:
        verdict = "passed" if check["passed"] else "FAILED"
        lines.append(f"Saliency check {verdict}: {check['reason']}")
    return lines


def saliency_title(saliency: Mapping[str, Any]) -> str:
    """``"Grad-CAM (lesion)"``: for layer names."""
    title = SALIENCY_TITLES.get(method_key(saliency["method"]), saliency["method"])
    return f"{title} ({saliency['target_class']})"


def slice_text(result: Mapping[str, Any], k: int) -> str | None:
    """``"slice 12/72: p(normal)=0.17 p(lesion)=0.83"`` for slice ``k`` (0-based, as acquired),
    or None where the model scores no slices or did not reach this one."""
    per_slice = result.get("per_slice")
    if not per_slice:
        return None
    scores = {name: values[k] for name, values in per_slice.items() if 0 <= k < len(values)}
    if not scores or any(p is None for p in scores.values()):
        return None
    total = len(next(iter(per_slice.values())))
    shown = " ".join(f"p({name})={p:.2f}" for name, p in scores.items())
    return f"slice {k + 1}/{total}: {shown}"
