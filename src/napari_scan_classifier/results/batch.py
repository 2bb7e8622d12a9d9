"""Batches of scans classified into de-identified rows, with their saliency maps saved."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from napari_scan_classifier.choice import Choice, Chooser, is_auto
from napari_scan_classifier.errors import (
    InvalidInputError,
    ScanClassifierError,
    UnreadableScanError,
)
from napari_scan_classifier.inference import Prediction
from napari_scan_classifier.limits import special_file_reason
from napari_scan_classifier.models import Bundle
from napari_scan_classifier.privacy import Redactor, numbered
from napari_scan_classifier.results.constants import (
    ANSWERED,
    BATCH_SIZE,
    DEFAULT_PASSES,
    NO_MODEL,
    OUT_OF_DISTRIBUTION,
)
from napari_scan_classifier.results.report import BatchReport
from napari_scan_classifier.results.scan import (
    ScanResult,
    _explained,
    check_saliency_class,
    predict,
    resolve_bundle,
)
from napari_scan_classifier.volume import Volume

_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


def classify_paths(
    paths: Sequence[str | os.PathLike[str]],
    bundle: Bundle | Chooser | str | os.PathLike[str] | None,
    *,
    saliency: str = "none",
    passes: int = DEFAULT_PASSES,
    faithfulness: bool = False,
    saliency_dir: str | os.PathLike[str] | None = None,
    saliency_class: str | None = None,
    frame: int | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    on_result: Callable[[int, Volume, ScanResult], None] | None = None,
    checkpoint: Callable[[BatchReport], None] | None = None,
) -> BatchReport:
    """Classify every series under every path with ``bundle`` (or the bundle at that path, the
    bundled one for None; ``"auto"`` or a Chooser: the model each scan chooses, see choice.py);
    maps of each series' predicted class (or of ``saliency_class``) go to ``saliency_dir`` as
    NIfTI; ``frame`` picks that volume of every 4D series (see :func:`at_frame`); ``on_row``
    gets each series' row as soon as it is done (a long batch shows its
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
        volumes = [at_frame(volume, frame) for volume in _load(path, number, report, redact)]
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


def at_frame(volume: Volume, frame: int | None) -> Volume:
    """The volume at ``frame`` of a 4D series that has it; any other series as it is: a cohort
    mixes 3D and 4D series, and a 4D series without that frame fails with the range it has."""
    if frame is None or volume.voxels.ndim == 3 or not 0 <= frame < volume.frames:
        return volume
    return volume.frame(frame)


def frame_fields(volume: Volume) -> dict[str, int | None]:
    """Which frame of a 4D series answered (``frame``; None for a whole scan) and how many the
    series has: the row and the dock say the same."""
    if volume.metadata.get("frame") is None:
        return {"frame": None, "frames": volume.frames}
    return {"frame": volume.metadata["frame"], "frames": volume.metadata["frames"]}


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
        **frame_fields(volume),
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
