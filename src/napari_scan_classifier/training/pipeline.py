"""The training run end to end (:func:`train`) and measuring a bundle (:func:`evaluate_bundle`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np
from matplotlib.figure import Figure

from napari_scan_classifier import datasets
from napari_scan_classifier.applicability import fit_applicability
from napari_scan_classifier.choice import model_region
from napari_scan_classifier.datasets import LabelledData, Split
from napari_scan_classifier.errors import (
    CancelledError,
    InvalidInputError,
)
from napari_scan_classifier.evaluation import (
    EvaluationReport,
    ece_text,
    evaluate,
    plot_confusion,
    plot_history,
    plot_reliability,
    plot_roc,
    softmax,
)
from napari_scan_classifier.models import Bundle, derive, save_bundle
from napari_scan_classifier.training.calibration import (
    Calibration,
    argmax_rule,
    evaluate_by_rule,
    fit_calibration,
    operating_point,
    prior_correction,
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
from napari_scan_classifier.training.fit import Fitted, fit_model
from napari_scan_classifier.training.guardrails import (
    Comparison,
    compare_with_base,
    too_few_warning,
)
from napari_scan_classifier.training.model import (
    bundle_logits,
    data_parallel,
    initial_model,
    volume_logits,
)
from napari_scan_classifier.training.record import (
    free_bundle_path,
    metrics_summary,
    new_metadata,
    png,
    training_info,
)


@dataclass
class TrainingResult:
    """The new model (saved or not yet: ``bundle.path``) and how it got there.

    ``report`` is the calibrated model on the validation cases at its decision rule,
    ``uncalibrated`` the same before calibration, ``base_report`` the base model on the same cases
    (when fine-tuning without new classes) and ``comparison`` the two side by side with a verdict.
    ``notes`` say what the user should know (new classes, early stop, calibration), ``warnings``
    what should make them wary (too few validation cases to tell).
    """

    bundle: Bundle
    history: dict[str, list[float]]
    report: EvaluationReport
    uncalibrated: EvaluationReport
    base_report: EvaluationReport | None
    class_counts: dict[str, dict[str, int]]
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    comparison: Comparison | None = None

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
    grid or modality, unreadable, or, fine-tuning, labels the base lacks without
    ``config.allow_new_classes``), CancelledError when cancelled; nothing is written then.
    """
    config = config or TrainingConfig()
    stop = cancel_check(cancel)
    recipe = recipe_for(config, base)
    data = load_data(source, recipe, progress, stop, config.label_names)
    classes, notes = model_classes(data, base, config)
    train_cases, val_cases, split_note = split_cases(data, classes, config)
    counts = {"train": train_cases.counts(classes), "validation": val_cases.counts(classes)}
    base_probabilities = _base_probabilities(base, classes, val_cases, config.batch_size)
    if stop():
        raise CancelledError("Training was cancelled before it started; nothing was saved")
    keras.utils.set_random_seed(config.seed)
    with data_parallel(config.devices) as devices:
        model = initial_model(recipe, base, classes, config.width)
        fitted = fit_model(
            model,
            train_cases,
            val_cases,
            classes,
            config,
            progress,
            stop,
            recipe.intensity,
            mirror=recipe.test_time_mirror,
        )
    if fitted.cancelled:
        raise CancelledError(
            f"Training was cancelled during epoch {fitted.epochs_run + 1}; nothing was saved"
        )
    logits = volume_logits(model, val_cases.x, config.batch_size, mirror=recipe.test_time_mirror)
    calibration, rule = _calibrate(logits, train_cases, val_cases, classes, config, fitted)
    uncalibrated = evaluate(val_cases.y, softmax(logits), classes)
    probabilities = calibration.probabilities(logits)
    report = evaluate_by_rule(val_cases.y, probabilities, classes, rule)
    notes = [*notes, *fitted.notes(config), *calibration.notes]
    base_report, comparison = _against_base(
        base, base_probabilities, probabilities, val_cases.y, classes, config.seed
    )
    warnings = [w for w in (too_few_warning(counts["validation"]),) if w]
    info = training_info(
        data, config, counts, split_note, fitted, report, uncalibrated, base_report, devices, notes
    )
    info.update(
        warnings=warnings,
        comparison_with_base=None if comparison is None else comparison.record(),
    )
    metadata = new_metadata(
        recipe, base, classes, calibration, rule, info, config, data.description
    )
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
    if metadata.body_region is None:  # from scratch: the one region its scans' headers name
        metadata = replace(metadata, body_region=model_region(metadata))
    result = TrainingResult(
        Bundle(metadata, model, detector=detector),
        fitted.history,
        report,
        uncalibrated,
        base_report,
        counts,
        tuple(notes),
        tuple(warnings),
        comparison,
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
    class_names: Sequence[str] | None = None,
) -> EvaluationReport:
    """Measure a bundle on labelled data with its calibration and decision rule: ``split`` of an
    npz (default test, else val) or every case of a library. Labels must be among the bundle's
    classes; ``class_names`` name an npz's label indices 0, 1, ... (see :mod:`.datasets`)."""
    m = bundle.metadata
    data = _bundle_data(bundle, source, class_names)
    x, y = _cases_in_model_classes(data, data.split(split), m.classes)
    logits = bundle_logits(bundle, x, batch_size)
    return evaluate_by_rule(y, m.probabilities(logits), m.classes, m.decision_rule)


def recalibrate_bundle(
    bundle: Bundle,
    source: str | Path | LabelledData,
    *,
    split: str | None = None,
    target_sensitivity: float | None = None,
    batch_size: int = 8,
    class_names: Sequence[str] | None = None,
) -> Bundle:
    """A new version of ``bundle`` (same network, next version, not yet saved: see
    :func:`~.models.save_bundle`) whose temperature, class bias and decision rule are fitted on
    the labelled cases of ``source`` (an npz's ``split``, default val; else every case).

    The probabilities are calibrated to the class frequencies of the bundle's own training data
    (from its ``bundle.json``; the cases' own when it does not record them), with the log-prior
    correction its imbalance setting implies as the biases' prior (see :mod:`.calibration`).
    """
    m = bundle.metadata
    data = _bundle_data(bundle, source, class_names)
    chosen = split or next((s for s in ("val", datasets.ALL) if s in data.splits), None)
    x, y = _cases_in_model_classes(data, data.split(chosen), m.classes)
    logits = bundle_logits(bundle, x, batch_size)
    before = evaluate_by_rule(y, m.probabilities(logits), m.classes, m.decision_rule)
    prior = _recorded_prior(m.training, m.classes, y)
    settings = m.training.get("settings", {})
    weights = m.training.get("class_weights", {})
    by_index = {k: float(weights[name]) for k, name in enumerate(m.classes) if name in weights}
    correction = prior_correction(prior, settings.get("imbalance", "none"), by_index)
    calibration = fit_calibration(logits, y, m.classes, prior, correction)
    probabilities = calibration.probabilities(logits)
    rule = (
        argmax_rule(m.classes, prior)
        if target_sensitivity is None
        else operating_point(probabilities, y, m.classes, target_sensitivity)
    )
    after = evaluate_by_rule(y, probabilities, m.classes, rule)
    record = {
        **calibration.record(),
        "recalibrated": {
            "from_version": m.version,
            "on": data.description,
            "before": metrics_summary(before),
            "after": metrics_summary(after),
        },
    }
    card = (
        f"{m.model_card}\n\n## Recalibrated from version {m.version}\nTemperature "
        f"{calibration.temperature:.3f} and class bias refitted on {len(y)} cases of "
        f"{data.description}: accuracy {before.accuracy:.3f} -> {after.accuracy:.3f}, ECE "
        f"{before.ece:.3f} -> {ece_text(after)}."
    ).strip()
    metadata = derive(
        m,
        temperature=calibration.temperature,
        class_bias=list(calibration.bias),
        decision_rule=rule,
        calibration=record,
        model_card=card,
    )
    return Bundle(metadata, bundle.model, detector=bundle.detector)  # same weights, same features


def _bundle_data(
    bundle: Bundle, source: str | Path | LabelledData, class_names: Sequence[str] | None
) -> LabelledData:
    m = bundle.metadata
    data = source
    if not isinstance(data, LabelledData):
        data = datasets.load_source(
            source, m.input_shape, m.target_spacing_mm, m.intensity, class_names=class_names
        )
    check_data_fits(data, m.input_shape, m.modality)
    return data


def _cases_in_model_classes(
    data: LabelledData, cases: Split, classes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """The cases' volumes and labels as indices into the model's ``classes``."""
    y = remap(cases.y, data.class_names, classes)
    if np.any(y < 0):
        unknown = sorted({data.class_names[i] for i in cases.y[y < 0]})
        hint = (
            "; name an npz file's label indices with --classes"
            if all(name.isdigit() for name in unknown)
            else ""
        )
        raise InvalidInputError(
            f"Cases labelled {', '.join(map(repr, unknown))} are not among the model's classes "
            f"{list(classes)}; evaluate on data with the model's classes only{hint}"
        )
    return cases.x, y


def _recorded_prior(
    training: Mapping[str, Any], classes: Sequence[str], y: np.ndarray
) -> np.ndarray:
    """The class frequencies of the bundle's training data, else of the cases ``y``."""
    counts = training.get("class_counts", {}).get("train", {})
    if all(isinstance(counts.get(name), int) for name in classes):
        values = np.array([counts[name] for name in classes], dtype=float)
    else:
        values = np.bincount(y, minlength=len(classes)).astype(float)
    values = np.maximum(values, 0.5)
    return values / values.sum()


def _base_probabilities(
    base: Bundle | None, classes: tuple[str, ...], val_cases: Split, batch_size: int
) -> np.ndarray | None:
    """The base model's calibrated probabilities of the validation cases (None: no base, or
    one that knows fewer classes and so cannot be compared)."""
    if base is None or len(base.metadata.classes) != len(classes):
        return None
    return base.metadata.probabilities(bundle_logits(base, val_cases.x, batch_size))


def _against_base(
    base: Bundle | None,
    base_probabilities: np.ndarray | None,
    probabilities: np.ndarray,
    y: np.ndarray,
    classes: tuple[str, ...],
    seed: int,
) -> tuple[EvaluationReport | None, Comparison | None]:
    """The base model's report on the validation cases and its comparison with the new one."""
    if base is None or base_probabilities is None:
        return None, None
    m = base.metadata
    report = evaluate_by_rule(y, base_probabilities, classes, m.decision_rule)
    return report, compare_with_base(y, probabilities, base_probabilities, m.version, seed=seed)


def _calibrate(
    logits: np.ndarray,
    train_cases: Split,
    val_cases: Split,
    classes: tuple[str, ...],
    config: TrainingConfig,
    fitted: Fitted,
) -> tuple[Calibration, dict[str, Any]]:
    """Temperature and class bias for the training data's class frequencies, and the rule."""
    prior = np.bincount(train_cases.y, minlength=len(classes)).astype(float)
    prior = np.maximum(prior, 0.5) / np.maximum(prior, 0.5).sum()  # an empty class: half a case
    correction = prior_correction(prior, config.imbalance, fitted.class_weights)
    calibration = fit_calibration(logits, val_cases.y, classes, prior, correction)
    if config.target_sensitivity is None:
        return calibration, argmax_rule(classes, prior)
    probabilities = calibration.probabilities(logits)
    return calibration, operating_point(
        probabilities, val_cases.y, classes, config.target_sensitivity
    )
