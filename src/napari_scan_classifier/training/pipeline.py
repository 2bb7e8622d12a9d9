"""The training run end to end (:func:`train`) and measuring a bundle (:func:`evaluate_bundle`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np
from matplotlib.figure import Figure

from napari_scan_classifier import datasets
from napari_scan_classifier.applicability import fit_applicability
from napari_scan_classifier.datasets import LabelledData, Split
from napari_scan_classifier.errors import (
    CancelledError,
    InvalidInputError,
)
from napari_scan_classifier.evaluation import (
    EvaluationReport,
    evaluate,
    fit_temperature,
    plot_confusion,
    plot_history,
    plot_reliability,
    plot_roc,
    softmax,
)
from napari_scan_classifier.models import (
    Bundle,
    save_bundle,
)
from napari_scan_classifier.training.config import (
    CancelFlag,
    TrainingConfig,
    TrainingEvent,
    cancel_check,
)
from napari_scan_classifier.training.data import (
    check_data_fits,
    load_data,
    model_classes,
    recipe_for,
    remap,
    split_cases,
)
from napari_scan_classifier.training.fit import fit_model
from napari_scan_classifier.training.model import data_parallel, initial_model, volume_logits
from napari_scan_classifier.training.record import (
    free_bundle_path,
    new_metadata,
    png,
    training_info,
)


@dataclass
class TrainingResult:
    """The new model (saved or not yet: ``bundle.path``) and how it got there.

    ``report`` is the calibrated model on the validation cases, ``uncalibrated`` the same before
    temperature scaling, ``base_report`` the base model on the same cases (when fine-tuning
    without new classes). ``notes`` say what the user should know (new classes, early stop).
    """

    bundle: Bundle
    history: dict[str, list[float]]
    report: EvaluationReport
    uncalibrated: EvaluationReport
    base_report: EvaluationReport | None
    class_counts: dict[str, dict[str, int]]
    notes: tuple[str, ...] = ()

    def figures(self) -> dict[str, Figure]:
        """The plots saved with the bundle, by file stem."""
        return {
            "history": plot_history(self.history),
            "roc": plot_roc(self.report),
            "confusion": plot_confusion(self.report),
            "reliability": plot_reliability(self.report),
            "reliability_uncalibrated": plot_reliability(self.uncalibrated),
        }

    def save(self, path: str | Path) -> Path:
        """Write the bundle and its plots to ``path`` in one atomic step (never overwrites)."""
        plots = {f"{name}.png": png(figure) for name, figure in self.figures().items()}
        target = save_bundle(self.bundle, path, extra_files=plots)
        self.bundle.path = target
        return target


def train(
    source: str | Path | LabelledData,
    config: TrainingConfig | None = None,
    *,
    base: Bundle | None = None,
    out: str | Path | None = None,
    progress: Callable[[TrainingEvent], None] | None = None,
    cancel: CancelFlag | None = None,
) -> TrainingResult:
    """Train on ``source`` (case library folder, ``.npz``, or data already on the model grid).

    From scratch with ``config.architecture``, or fine-tuning a copy of ``base``. With ``out``,
    the new bundle is saved as ``out/<name>-v<version>`` (see :meth:`TrainingResult.save`).
    Raises TrainingError when the data cannot train a model (one class, too few cases, wrong
    grid or modality, unreadable), CancelledError when cancelled; nothing is written then.
    """
    config = config or TrainingConfig()
    stop = cancel_check(cancel)
    recipe = recipe_for(config, base)
    data = load_data(source, recipe, progress, stop)
    classes, notes = model_classes(data, base, config)
    train_cases, val_cases, split_note = split_cases(data, classes, config)
    counts = {"train": train_cases.counts(classes), "validation": val_cases.counts(classes)}
    base_report = base_model_report(base, classes, val_cases, config.batch_size)
    if stop():
        raise CancelledError("Training was cancelled before it started; nothing was saved")
    keras.utils.set_random_seed(config.seed)
    with data_parallel(config.devices) as devices:
        model = initial_model(recipe, base, classes, config.width)
        fitted = fit_model(model, train_cases, val_cases, classes, config, progress, stop)
    if fitted.cancelled:
        raise CancelledError(
            f"Training was cancelled during epoch {fitted.epochs_run + 1}; nothing was saved"
        )
    logits = volume_logits(model, val_cases.x, config.batch_size)
    temperature = fit_temperature(logits, val_cases.y)
    uncalibrated = evaluate(val_cases.y, softmax(logits), classes)
    report = evaluate(val_cases.y, softmax(logits, temperature), classes)
    notes = [*notes, *fitted.notes(config)]
    info = training_info(
        data, config, counts, split_note, fitted, report, uncalibrated, base_report, devices, notes
    )
    metadata = new_metadata(recipe, base, classes, temperature, info, config, data.description)
    detector, applicability = fit_applicability(
        model,
        (train_cases.x, train_cases.y),
        val_cases.x,
        data.summaries,
        recipe.modality,
        base.metadata.applicability if base is not None else None,
        config.false_abstention_rate,
    )
    metadata = replace(metadata, applicability=applicability)
    result = TrainingResult(
        Bundle(metadata, model, detector=detector),
        fitted.history,
        report,
        uncalibrated,
        base_report,
        counts,
        tuple(notes),
    )
    if out is not None:
        result.save(free_bundle_path(Path(out), result))
    return result


def evaluate_bundle(
    bundle: Bundle,
    source: str | Path | LabelledData,
    *,
    split: str | None = None,
    batch_size: int = 8,
) -> EvaluationReport:
    """Measure a bundle on labelled data with its calibration: ``split`` of an npz (default
    test, else val) or every case of a library. Labels must be among the bundle's classes."""
    m = bundle.metadata
    data = source
    if not isinstance(data, LabelledData):
        data = datasets.load_source(source, m.input_shape, m.target_spacing_mm, m.intensity)
    check_data_fits(data, m.input_shape, m.modality)
    cases = data.split(split)
    y = remap(cases.y, data.class_names, m.classes)
    if np.any(y < 0):
        unknown = sorted({data.class_names[i] for i in cases.y[y < 0]})
        raise InvalidInputError(
            f"Cases labelled {', '.join(map(repr, unknown))} are not among the model's classes "
            f"{m.classes}; evaluate on data with the model's classes only"
        )
    logits = volume_logits(bundle.model, cases.x, batch_size)
    return evaluate(y, softmax(logits, m.temperature), m.classes)


def base_model_report(
    base: Bundle | None, classes: tuple[str, ...], val_cases: Split, batch_size: int
) -> EvaluationReport | None:
    if base is None or len(base.metadata.classes) != len(classes):
        return None
    logits = volume_logits(base.model, val_cases.x, batch_size)
    return evaluate(val_cases.y, softmax(logits, base.metadata.temperature), classes)
