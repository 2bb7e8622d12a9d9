"""How good is a classifier, and can its probabilities be trusted? Metrics, calibration, plots.

Metrics come from scikit-learn where it has them (AUC, ROC, confusion matrix); expected
calibration error and temperature scaling are written here because scikit-learn has neither.
Figures are built on ``matplotlib.figure.Figure`` without pyplot, so they embed in a Qt dock and
render headless alike, and no global figure state leaks between calls.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

DEFAULT_BINS = 10
# Softmax outputs saved as float32 sum to 1 only to about 1e-6; allow for rounding in files.
_SUM_TOLERANCE = 1e-3
_LOG_T_BOUNDS = (math.log(1e-2), math.log(1e2))
_CHANCE_DRAWS = 1000  # simulated label sets behind ece_by_chance


@dataclass(frozen=True)
class RocCurve:
    """One ROC curve (one-vs-rest for a class) from ``sklearn.metrics.roc_curve``."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    auc: float


@dataclass(frozen=True)
class Reliability:
    """Equal-width confidence bins: the data of a reliability diagram and of the ECE.

    ``confidence`` and ``accuracy`` are NaN for empty bins.
    """

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    counts: np.ndarray


@dataclass(frozen=True)
class ClassMetrics:
    """One class against the rest: its cases, one-vs-rest AUC, sensitivity and specificity."""

    n: int
    auc: float
    sensitivity: float
    specificity: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "auc": _number(self.auc),
            "sensitivity": _number(self.sensitivity),
            "specificity": _number(self.specificity),
        }


@dataclass(frozen=True)
class EvaluationReport:
    """Everything ``evaluate`` measured. NaN marks a metric that is undefined (see ``notes``).

    ``auc`` is the positive class's (binary) or the macro one-vs-rest mean; ``per_class`` holds
    each class against the rest, so a three-class model shows which class it confuses.
    """

    class_names: tuple[str, ...]
    positive_class: str | None
    threshold: float
    n: int
    class_counts: dict[str, int]
    auc: float
    accuracy: float
    sensitivity: float
    specificity: float
    ece: float
    confusion: np.ndarray
    roc_curves: dict[str, RocCurve]
    reliability: Reliability
    notes: tuple[str, ...] = field(default=())
    per_class: dict[str, ClassMetrics] = field(default_factory=dict)
    ece_by_chance: tuple[float, float] = (math.nan, math.nan)  # see ece_by_chance()

    @property
    def auc_label(self) -> str:
        """``"AUC"`` for two classes, ``"macro AUC"`` (one-vs-rest mean) for more."""
        return "AUC" if len(self.class_names) == 2 else "macro AUC"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; undefined (NaN) and infinite values become ``None``."""
        return {
            "auc": _number(self.auc),
            "accuracy": _number(self.accuracy),
            "sensitivity": _number(self.sensitivity),
            "specificity": _number(self.specificity),
            "ece": _number(self.ece),
            "ece_by_chance": _number(self.ece_by_chance[0]),
            "ece_by_chance_95": _number(self.ece_by_chance[1]),
            "n": self.n,
            "class_names": list(self.class_names),
            "positive_class": self.positive_class,
            "threshold": self.threshold,
            "class_counts": dict(self.class_counts),
            "confusion_matrix": self.confusion.tolist(),
            "roc": {
                name: {
                    "fpr": _numbers(curve.fpr),
                    "tpr": _numbers(curve.tpr),
                    "thresholds": _numbers(curve.thresholds),
                    "auc": _number(curve.auc),
                }
                for name, curve in self.roc_curves.items()
            },
            "reliability": {
                "edges": _numbers(self.reliability.edges),
                "confidence": _numbers(self.reliability.confidence),
                "accuracy": _numbers(self.reliability.accuracy),
                "counts": self.reliability.counts.tolist(),
            },
            "per_class": {name: m.to_dict() for name, m in self.per_class.items()},
            "notes": list(self.notes),
        }


def evaluate(
    y_true: Sequence[int] | Sequence[str] | np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    *,
    positive_class: str | None = None,
    threshold: float = 0.5,
    n_bins: int = DEFAULT_BINS,
) -> EvaluationReport:
    """Measure predicted ``probabilities`` (n, classes) against true labels.

    ``y_true`` holds class indices or class names. Binary (two classes): the positive class is
    ``positive_class`` (default: the second name), a case is called positive when its probability
    reaches ``threshold``, and sensitivity/specificity are those of the positive class; a 1D
    ``probabilities`` is read as the probability of the second class. Multiclass: the prediction
    is the most probable class (``threshold`` is not used), AUC is the macro one-vs-rest mean, and
    sensitivity/specificity are macro means over classes, or one-vs-rest for ``positive_class``.

    AUC is NaN, with a note, when a class has no cases: a ROC curve needs both positives and
    negatives. Sensitivity/specificity are NaN when there are no positives/negatives.
    """
    names = tuple(str(name) for name in class_names)
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError("class_names must list at least two distinct classes")
    y = _class_indices(y_true, names)
    p = _probability_matrix(probabilities, len(names), len(y))
    positive = _positive_index(positive_class, names)
    if len(names) == 2:
        positive = 1 if positive is None else positive
        predicted = np.where(p[:, positive] >= threshold, positive, 1 - positive)
    else:
        predicted = p.argmax(axis=1)
    confusion = confusion_matrix(y, predicted, labels=np.arange(len(names)))
    sensitivity, specificity = _sensitivity_specificity(confusion, positive)
    auc, notes = _auc(y, p, names, positive)
    reliability = reliability_bins(y, p, n_bins)
    counts = np.bincount(y, minlength=len(names))
    return EvaluationReport(
        class_names=names,
        positive_class=None if positive is None else names[positive],
        threshold=float(threshold),
        n=len(y),
        class_counts={name: int(count) for name, count in zip(names, counts, strict=True)},
        auc=auc,
        accuracy=float(np.mean(predicted == y)),
        sensitivity=sensitivity,
        specificity=specificity,
        ece=_ece(reliability, len(y)),
        confusion=confusion,
        roc_curves=_roc_curves(y, p, names, positive),
        reliability=reliability,
        notes=notes,
        per_class=_per_class(y, p, confusion, names),
        ece_by_chance=ece_by_chance(p, n_bins),
    )


def reliability_bins(
    y_true: np.ndarray, probabilities: np.ndarray, n_bins: int = DEFAULT_BINS
) -> Reliability:
    """Bin cases by confidence (their highest probability) into ``n_bins`` equal-width bins.

    Bins are (lo, hi], the first also holding 0. Accuracy in a bin is the fraction of cases whose
    most probable class is the true one ("top-label" calibration, which covers any number of
    classes, unlike ``sklearn.calibration.calibration_curve``, which bins one class's probability).
    """
    y = np.asarray(y_true)
    p = np.asarray(probabilities, dtype=float)
    confidence = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    edges, bins = _confidence_bins(confidence, n_bins)
    counts = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(bins, weights=confidence, minlength=n_bins) / counts
        accuracy = np.bincount(bins, weights=correct, minlength=n_bins) / counts
    return Reliability(edges, mean_confidence, accuracy, counts)


def expected_calibration_error(
    y_true: np.ndarray, probabilities: np.ndarray, n_bins: int = DEFAULT_BINS
) -> float:
    """Expected calibration error (ECE): how far confidence is from accuracy, on average.

    By hand: sort the cases into equal-width bins by confidence (their highest probability). In
    each bin, compare the mean confidence with the fraction of cases the model got right; the ECE
    is the mean of these gaps, each weighted by the share of cases in its bin. Example: four cases
    at confidence 0.85 of which three are right (gap |0.75 - 0.85| = 0.10) and two at 0.55 with
    one right (gap 0.05) give ECE = 4/6 * 0.10 + 2/6 * 0.05 = 0.083. A model whose "80 % sure"
    cases are right 80 % of the time has ECE 0. scikit-learn has no ECE: its calibration_curve
    gives per-bin fractions for one class only and drops empty bins, losing the weights.
    """
    y = np.asarray(y_true)
    return _ece(reliability_bins(y, probabilities, n_bins), len(y))


def ece_by_chance(
    probabilities: np.ndarray, n_bins: int = DEFAULT_BINS, seed: int = 0
) -> tuple[float, float]:
    """The ECE a perfectly calibrated model with these confidences would show on this many
    cases: the mean and 95th percentile over simulated label sets (each case right with the
    probability of its confidence, which is what calibration means).

    Why: binned ECE is biased upwards on few cases (a calibrated model shows about 0.05 on 150
    cases of middling confidence), so an ECE is only read against this. Below the mean, nothing
    to fix; above the 95th percentile, the model is miscalibrated at the 5 % level. Seeded, so
    a report is reproducible.
    """
    confidence = np.asarray(probabilities, dtype=float).max(axis=1)
    _, bins = _confidence_bins(confidence, n_bins)
    in_bin = np.zeros((len(confidence), n_bins))
    in_bin[np.arange(len(confidence)), bins] = 1.0
    rng = np.random.default_rng(seed)
    expected, eces = confidence @ in_bin, []
    for _ in range(_CHANCE_DRAWS // 100):  # 100 label sets at a time bound the memory
        right = (rng.random((100, len(confidence))) < confidence).astype(np.float32) @ in_bin
        eces.append(np.abs(right - expected).sum(axis=1) / max(len(confidence), 1))
    return float(np.mean(eces)), float(np.quantile(np.concatenate(eces), 0.95))


def ece_text(report: EvaluationReport, digits: int = 3) -> str:
    """``"0.072 (0.051 by chance, 95 % 0.090)"``: the ECE beside what chance alone gives."""
    mean, top = report.ece_by_chance
    if not (math.isfinite(report.ece) and math.isfinite(mean)):
        return "n/a" if not math.isfinite(report.ece) else f"{report.ece:.{digits}f}"
    return f"{report.ece:.{digits}f} ({mean:.{digits}f} by chance, 95 % {top:.{digits}f})"


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Probabilities from (n, classes) logits, divided by ``temperature`` first (T > 1 softens)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    z = _logit_matrix(logits) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, y_true: Sequence[int] | np.ndarray) -> float:
    """The temperature T that best calibrates ``softmax(logits / T)`` on held-out cases.

    Minimises the mean negative log-likelihood over log T (so T stays positive and the search is
    scale-free), within T in [0.01, 100]. Dividing logits by one T never changes which class is
    most probable, so accuracy and AUC stay the same while confidence is corrected. Binary
    models with one logit z: pass ``np.stack([np.zeros_like(z), z], axis=1)``.
    """
    z = _logit_matrix(logits)
    y = np.asarray(y_true, dtype=int)
    if y.shape != (len(z),) or y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError("y_true must hold one class index per row of logits")
    rows = np.arange(len(y))

    def nll(log_t: float) -> float:
        return float(-log_softmax(z / math.exp(log_t), axis=1)[rows, y].mean())

    result = minimize_scalar(nll, bounds=_LOG_T_BOUNDS, method="bounded")
    return float(math.exp(result.x))


# -- figures ---------------------------------------------------------------------------------


def plot_roc(report: EvaluationReport) -> Figure:
    """ROC curve(s) with their AUC, against the chance diagonal."""
    figure = Figure(figsize=(5, 5), layout="constrained")
    ax = figure.add_subplot()
    for name, curve in report.roc_curves.items():
        ax.plot(curve.fpr, curve.tpr, label=f"{name} (AUC {curve.auc:.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    if not report.roc_curves:
        ax.text(0.5, 0.5, "ROC undefined: only one class present", ha="center")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity", ylabel="sensitivity")
    auc = f"{report.auc:.3f}" if math.isfinite(report.auc) else "undefined"
    ax.set_title(f"ROC: {report.auc_label} {auc} (n = {report.n})")
    ax.legend(loc="lower right")
    return figure


def plot_confusion(report: EvaluationReport) -> Figure:
    """Confusion matrix: rows are true classes, columns predictions; counts and row shares."""
    k = len(report.class_names)
    figure = Figure(figsize=(1.2 * k + 3, 1.2 * k + 2), layout="constrained")
    ax = figure.add_subplot()
    counts = report.confusion
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = counts / counts.sum(axis=1, keepdims=True)
    image = ax.imshow(np.nan_to_num(shares), cmap="Blues", vmin=0, vmax=1)
    for (row, column), count in np.ndenumerate(counts):
        share = shares[row, column]
        text = f"{count}\n{share:.0%}" if np.isfinite(share) else f"{count}"
        colour = "white" if np.nan_to_num(share) > 0.5 else "black"
        ax.text(column, row, text, ha="center", va="center", color=colour)
    ticks = np.arange(k)
    ax.set_xticks(ticks, report.class_names, rotation=30, ha="right")
    ax.set_yticks(ticks, report.class_names)
    ax.set(xlabel="predicted", ylabel="true", title=f"Accuracy {report.accuracy:.3f}")
    figure.colorbar(image, ax=ax, label="share of the true class")
    return figure


def plot_reliability(report: EvaluationReport) -> Figure:
    """Reliability diagram (accuracy vs confidence per bin) above the count of cases per bin."""
    bins = report.reliability
    centres = (bins.edges[:-1] + bins.edges[1:]) / 2
    width = np.diff(bins.edges)
    figure = Figure(figsize=(5, 6), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.bar(centres, np.nan_to_num(bins.accuracy), width=width, edgecolor="black", label="accuracy")
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    top.plot(
        bins.confidence,
        bins.accuracy,
        marker="o",
        color="tab:red",
        label="bins (confidence, accuracy)",
    )
    chance = f"; {report.ece_by_chance[0]:.3f} by chance" * math.isfinite(report.ece_by_chance[0])
    top.set(ylim=(0, 1), ylabel="accuracy", title=f"Reliability (ECE {report.ece:.3f}{chance})")
    top.legend(loc="upper left")
    bottom.bar(centres, bins.counts, width=width, edgecolor="black", color="tab:grey")
    bottom.set(xlim=(0, 1), xlabel="confidence (highest probability)", ylabel="cases")
    return figure


def plot_history(history: Mapping[str, Sequence[float]]) -> Figure:
    """Training curves per epoch, one panel per metric (loss first), train vs ``val_`` lines.

    ``history`` is Keras' ``History.history``: {"loss": [...], "val_loss": [...], "auc": ...}.
    """
    metrics = sorted({key.removeprefix("val_") for key, values in history.items() if len(values)})
    if not metrics:
        raise ValueError("the training history is empty")
    metrics.sort(key=lambda name: name != "loss")
    figure = Figure(figsize=(4.5 * len(metrics), 4), layout="constrained")
    for ax, metric in zip(np.atleast_1d(figure.subplots(1, len(metrics))), metrics, strict=True):
        for key, label in ((metric, "train"), (f"val_{metric}", "validation")):
            values = list(history.get(key, []))
            if values:  # no empty "train" entry for a metric measured on validation only
                ax.plot(np.arange(1, len(values) + 1), values, marker=".", label=label)
        ax.set(xlabel="epoch", ylabel=metric, title=metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    return figure


def save_figures(
    report: EvaluationReport,
    history: Mapping[str, Sequence[float]] | None,
    folder: Path | str,
) -> list[Path]:
    """Write roc.png, confusion.png, reliability.png (and history.png) atomically to ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    figures = {
        "roc": plot_roc(report),
        "confusion": plot_confusion(report),
        "reliability": plot_reliability(report),
    }
    if history:
        figures["history"] = plot_history(history)
    return [_save_png(figure, folder / f"{name}.png") for name, figure in figures.items()]


# -- internals -------------------------------------------------------------------------------


def per_class_lines(report: EvaluationReport) -> list[str]:
    """One line per class against the rest: ``"tumour: n 30, AUC 0.950, sensitivity 0.900,
    specificity 0.950"``."""
    return [
        f"{name}: n {m.n}, AUC {_text(m.auc)}, sensitivity {_text(m.sensitivity)}, "
        f"specificity {_text(m.specificity)}"
        for name, m in report.per_class.items()
    ]


def confusion_lines(report: EvaluationReport) -> list[str]:
    """The confusion matrix as aligned text: rows true classes, columns predictions."""
    names = report.class_names
    width = max(len(name) for name in (*names, "true \\ called"))
    cells = [max(len(name), len(str(report.confusion.max()))) for name in names]
    header = "true \\ called".ljust(width) + "".join(
        f"  {name:>{cell}}" for name, cell in zip(names, cells, strict=True)
    )
    rows = [
        name.ljust(width)
        + "".join(f"  {count:>{cell}}" for count, cell in zip(row, cells, strict=True))
        for name, row in zip(names, report.confusion.tolist(), strict=True)
    ]
    return [header, *rows]


def _text(value: float) -> str:
    return f"{value:.3f}" if math.isfinite(value) else "n/a"


def _save_png(figure: Figure, path: Path) -> Path:
    temporary = path.with_name(f".partial-{path.name}")
    try:
        figure.savefig(temporary, format="png", dpi=120)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def _class_indices(
    y_true: Sequence[int] | Sequence[str] | np.ndarray, names: tuple[str, ...]
) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1 or y.size == 0:
        raise ValueError("y_true must be a non-empty 1D sequence of labels")
    if y.dtype.kind in "USO":
        unknown = sorted({str(label) for label in y} - set(names))
        if unknown:
            raise ValueError(f"labels not among the class names: {unknown}")
        return np.array([names.index(str(label)) for label in y])
    if y.dtype.kind == "f" and not np.array_equal(y, np.round(y)):
        raise ValueError("y_true must hold class indices or class names")
    y = y.astype(int)
    if y.min() < 0 or y.max() >= len(names):
        raise ValueError(f"class indices must lie in [0, {len(names) - 1}]")
    return y


def _probability_matrix(probabilities: np.ndarray, k: int, n: int) -> np.ndarray:
    p = np.asarray(probabilities, dtype=float)
    if p.ndim == 1 and k == 2:
        p = np.stack([1.0 - p, p], axis=1)
    if p.shape != (n, k):
        raise ValueError(f"probabilities must have shape ({n}, {k}), got {p.shape}")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise ValueError("probabilities must be finite and within [0, 1]")
    if not np.allclose(p.sum(axis=1), 1.0, atol=_SUM_TOLERANCE):
        raise ValueError("each row of probabilities must sum to 1 (apply softmax to logits)")
    return p / p.sum(axis=1, keepdims=True)


def _positive_index(positive_class: str | None, names: tuple[str, ...]) -> int | None:
    if positive_class is None:
        return None
    if positive_class not in names:
        raise ValueError(f"positive_class {positive_class!r} is not among {list(names)}")
    return names.index(positive_class)


def _rates(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each class's sensitivity and specificity against the rest (NaN where undefined)."""
    total = confusion.sum()
    true_pos = np.diag(confusion).astype(float)
    actual = confusion.sum(axis=1)
    called = confusion.sum(axis=0)
    true_neg = total - actual - called + true_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return true_pos / actual, true_neg / (total - actual)


def _sensitivity_specificity(confusion: np.ndarray, positive: int | None) -> tuple[float, float]:
    """One class vs the rest when ``positive`` is given, else macro means over classes."""
    sensitivity, specificity = _rates(confusion)
    if positive is not None:
        return float(sensitivity[positive]), float(specificity[positive])
    return _nanmean(sensitivity), _nanmean(specificity)


def _auc(
    y: np.ndarray, p: np.ndarray, names: tuple[str, ...], positive: int | None
) -> tuple[float, tuple[str, ...]]:
    missing = [name for index, name in enumerate(names) if not np.any(y == index)]
    if missing:
        return math.nan, (f"AUC is undefined: no cases of class {', '.join(missing)}",)
    if len(names) == 2:
        return float(roc_auc_score(y == positive, p[:, positive])), ()
    labels = np.arange(len(names))
    return float(roc_auc_score(y, p, multi_class="ovr", average="macro", labels=labels)), ()


def _per_class(
    y: np.ndarray, p: np.ndarray, confusion: np.ndarray, names: tuple[str, ...]
) -> dict[str, ClassMetrics]:
    sensitivity, specificity = _rates(confusion)
    metrics = {}
    for index, name in enumerate(names):
        is_class = y == index
        defined = is_class.any() and not is_class.all()
        auc = float(roc_auc_score(is_class, p[:, index])) if defined else math.nan
        metrics[name] = ClassMetrics(
            int(is_class.sum()), auc, float(sensitivity[index]), float(specificity[index])
        )
    return metrics


def _roc_curves(
    y: np.ndarray, p: np.ndarray, names: tuple[str, ...], positive: int | None
) -> dict[str, RocCurve]:
    """The positive class's curve (binary) or one-vs-rest curves for every class."""
    indices = [positive] if len(names) == 2 else range(len(names))
    curves = {}
    for index in indices:
        is_class = y == index
        if is_class.all() or not is_class.any():
            continue
        fpr, tpr, thresholds = roc_curve(is_class, p[:, index])
        auc = float(roc_auc_score(is_class, p[:, index]))
        curves[names[index]] = RocCurve(fpr, tpr, thresholds, auc)
    return curves


def _confidence_bins(confidence: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal-width bin edges and each case's bin: (lo, hi], the first also holding 0."""
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return edges, np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)


def _ece(reliability: Reliability, n: int) -> float:
    filled = reliability.counts > 0
    gaps = np.abs(reliability.accuracy[filled] - reliability.confidence[filled])
    return float(np.sum(reliability.counts[filled] / n * gaps))


def _logit_matrix(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=float)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(
            "logits must be (n, classes) with at least two classes; for a one-logit binary "
            "model pass np.stack([np.zeros_like(z), z], axis=1)"
        )
    return z


def _nanmean(values: np.ndarray) -> float:
    defined = values[np.isfinite(values)]
    return float(defined.mean()) if defined.size else math.nan


def _number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _numbers(values: np.ndarray) -> list[float | None]:
    return [_number(float(value)) for value in values]
