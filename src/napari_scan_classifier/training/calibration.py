"""Calibration that undoes the prior shift of class weighting, fitted on validation cases.

Class weighting and balanced sampling train the network as if every class were equally common.
One temperature cannot move that prior back: dividing the logits by T never changes which class
wins. So the calibrated probability is ``softmax(logits / T + b)`` with a bias ``b`` per class,
fitted (with T) on the validation cases by weighted maximum likelihood:

- every validation case is weighted so the classes count in the training data's proportions,
  which makes the calibrated probabilities those of the training data's class frequencies and the
  most probable class the Bayes (minimum-error) decision for them;
- the biases have a Gaussian prior (SD :data:`BIAS_PRIOR_SD` logits) centred on the explicit
  log-prior correction ``log(prior) - log(prior the training weighted for)``, and log T one centred
  on 0 (SD :data:`LOG_TEMPERATURE_PRIOR_SD`): with a handful of cases the fit stays near the
  correction that the training settings imply instead of running to extremes, with a hundred the
  cases decide;
- T stays within :data:`TEMPERATURE_BOUNDS`.

Fewer than :data:`MIN_CASES_PER_CLASS` validation cases of a class make the fit too uncertain to
mean much: the result says so (``reliable`` False and a note).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax

from napari_scan_classifier.errors import TrainingError
from napari_scan_classifier.evaluation import EvaluationReport, evaluate
from napari_scan_classifier.models.bundle import calibrated

MIN_CASES_PER_CLASS = 10
TEMPERATURE_BOUNDS = (0.05, 20.0)
BIAS_PRIOR_SD = 1.0
LOG_TEMPERATURE_PRIOR_SD = 1.0
METHOD = (
    "temperature and per-class bias, fitted on the validation cases weighted to the training "
    "data's class frequencies (maximum a posteriori, biases centred on the log-prior correction)"
)


@dataclass(frozen=True)
class Calibration:
    """A fitted ``softmax(logits / temperature + bias)`` and what it was fitted on."""

    classes: tuple[str, ...]
    temperature: float
    bias: tuple[float, ...]
    prior: tuple[float, ...]  # the class frequencies the probabilities are calibrated to
    cases_per_class: dict[str, int]
    notes: tuple[str, ...] = field(default=())

    @property
    def reliable(self) -> bool:
        """Whether every class had enough validation cases for the fit to mean something."""
        return min(self.cases_per_class.values()) >= MIN_CASES_PER_CLASS

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (n, classes) of volume logits (n, classes)."""
        return calibrated(logits, self.temperature, self.bias)

    def record(self) -> dict[str, Any]:
        """What ``bundle.json`` keeps in its ``calibration`` field."""
        return {
            "method": METHOD,
            "temperature": round(self.temperature, 6),
            "class_bias": dict(zip(self.classes, _rounded(self.bias), strict=True)),
            "prior": dict(zip(self.classes, _rounded(self.prior), strict=True)),
            "fitted_on": {
                "cases": sum(self.cases_per_class.values()),
                "per_class": dict(self.cases_per_class),
            },
            "reliable": self.reliable,
            "notes": list(self.notes),
        }


def argmax_rule(classes: Sequence[str], prior: Sequence[float]) -> dict[str, Any]:
    """The decision rule the calibration makes the Bayes decision, for ``bundle.json``."""
    frequencies = ", ".join(f"{c} {p:.2f}" for c, p in zip(classes, prior, strict=True))
    return {
        "kind": "argmax",
        "description": (
            "the class with the highest calibrated probability: the minimum-error decision for "
            f"the training data's class frequencies ({frequencies})"
        ),
    }


def prior_correction(
    prior: Sequence[float], imbalance: str, class_weights: Mapping[int, float] | None = None
) -> np.ndarray:
    """Log-prior correction for a network trained with ``imbalance``: ``log(prior) - log(the
    prior its loss saw)``, centred. Class weights scale each class's share of the loss; balanced
    sampling draws the classes equally; ``"none"`` trains for the data's own prior."""
    p = np.asarray(prior, dtype=float)
    if imbalance == "balanced_sampling":
        seen = np.full_like(p, 1.0 / len(p))
    elif imbalance == "class_weight" and class_weights:
        w = np.array([class_weights.get(k, 1.0) for k in range(len(p))], dtype=float)
        seen = p * w / np.sum(p * w)
    else:
        seen = p
    correction = np.log(np.clip(p, 1e-12, None)) - np.log(np.clip(seen, 1e-12, None))
    return correction - correction.mean()


def fit_calibration(
    logits: np.ndarray,
    y: np.ndarray,
    classes: Sequence[str],
    prior: Sequence[float],
    correction: Sequence[float] | None = None,
) -> Calibration:
    """Fit T and the class biases on validation ``logits`` (n, classes) with labels ``y`` so the
    probabilities match ``prior`` (the training class frequencies); see the module doc."""
    z = np.asarray(logits, dtype=float)
    y = np.asarray(y, dtype=int)
    k = len(classes)
    if z.ndim != 2 or z.shape != (len(y), k):
        raise ValueError("logits must be (cases, classes) with one label per case")
    p = np.asarray(prior, dtype=float) / np.sum(prior)
    b0 = np.zeros(k) if correction is None else np.asarray(correction, dtype=float)
    counts = np.bincount(y, minlength=k)
    weights = _case_weights(y, counts, p)
    onehot = np.eye(k)[y]
    lo, hi = (math.log(t) for t in TEMPERATURE_BOUNDS)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        log_t, b = theta[0], theta[1:]
        scaled = z / math.exp(log_t)
        log_q = log_softmax(scaled + b, axis=1)
        residual = (np.exp(log_q) - onehot) * weights[:, None]
        nll = -float(np.sum(weights * log_q[np.arange(len(y)), y]))
        penalty = 0.5 * float(np.sum((b - b0) ** 2)) / BIAS_PRIOR_SD**2
        penalty += 0.5 * log_t**2 / LOG_TEMPERATURE_PRIOR_SD**2
        grad_t = -float(np.sum(residual * scaled)) + log_t / LOG_TEMPERATURE_PRIOR_SD**2
        grad_b = residual.sum(axis=0) + (b - b0) / BIAS_PRIOR_SD**2
        return nll + penalty, np.concatenate([[grad_t], grad_b])

    start = np.concatenate([[0.0], b0])
    bounds = [(lo, hi)] + [(None, None)] * k
    fitted = minimize(loss, start, jac=True, method="L-BFGS-B", bounds=bounds).x
    temperature = float(math.exp(fitted[0]))
    bias = fitted[1:] - fitted[1:].mean()
    per_class = {name: int(n) for name, n in zip(classes, counts, strict=True)}
    notes = _notes(per_class, temperature, fitted[0], (lo, hi))
    return Calibration(
        tuple(classes), temperature, tuple(float(v) for v in bias), tuple(p), per_class, notes
    )


def _case_weights(y: np.ndarray, counts: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Weights that make each class count as ``prior`` of the cases (mean weight 1)."""
    n = len(y)
    share = np.where(counts > 0, counts / max(n, 1), 1.0)
    return (prior / share)[y]


def _notes(
    per_class: dict[str, int], temperature: float, log_t: float, bounds: tuple[float, float]
) -> tuple[str, ...]:
    notes = []
    few = {name: n for name, n in per_class.items() if n < MIN_CASES_PER_CLASS}
    if few:
        listing = ", ".join(f"{name}: {n}" for name, n in per_class.items())
        notes.append(
            f"Calibration was fitted on {sum(per_class.values())} validation cases ({listing}); "
            f"with fewer than {MIN_CASES_PER_CLASS} of a class the probabilities are too "
            "uncertain to mean much, and the fit leans on the log-prior correction the training "
            "settings imply."
        )
    if min(abs(log_t - bounds[0]), abs(log_t - bounds[1])) < 1e-3:
        notes.append(
            f"The fitted temperature reached its bound ({temperature:.3g}, allowed "
            f"{TEMPERATURE_BOUNDS[0]:g}-{TEMPERATURE_BOUNDS[1]:g}): the validation cases do not "
            "support a calibration; treat the probabilities as rough."
        )
    return tuple(notes)


def _rounded(values: Sequence[float]) -> list[float]:
    return [round(float(v), 6) for v in values]


def operating_point(
    probabilities: np.ndarray, y: np.ndarray, classes: Sequence[str], target_sensitivity: float
) -> dict[str, Any]:
    """A threshold rule for the second (positive) of two classes: the highest threshold on its
    calibrated probability that keeps the validation sensitivity at ``target_sensitivity``."""
    if len(classes) != 2:
        raise TrainingError("An operating point (target sensitivity) needs exactly two classes")
    scores = np.sort(np.asarray(probabilities, dtype=float)[np.asarray(y) == 1, 1])[::-1]
    if len(scores) == 0:
        raise TrainingError(f"No validation cases of '{classes[1]}' to set an operating point on")
    needed = max(1, math.ceil(target_sensitivity * len(scores) - 1e-9))
    # halfway to the next lower score, so rounding cannot drop the case that sets it
    below = scores[needed] if needed < len(scores) else 0.0
    threshold = float(np.clip((scores[needed - 1] + below) / 2, 1e-6, 1 - 1e-6))
    rule = {"kind": "threshold", "positive_class": classes[1], "threshold": threshold}
    report = evaluate_by_rule(y, probabilities, classes, rule)
    rule.update(
        target_sensitivity=float(target_sensitivity),
        description=(
            f"'{classes[1]}' when its calibrated probability is at least {threshold:.3f}: the "
            f"operating point for sensitivity {target_sensitivity:.2f} on the validation cases "
            f"(measured there: sensitivity {report.sensitivity:.3f}, specificity "
            f"{report.specificity:.3f}, {len(scores)} '{classes[1]}' cases)"
        ),
    )
    return rule


def evaluate_by_rule(
    y: np.ndarray, probabilities: np.ndarray, classes: Sequence[str], rule: Mapping[str, Any]
) -> EvaluationReport:
    """:func:`~napari_scan_classifier.evaluation.evaluate` with the cases called by ``rule``."""
    if rule.get("kind") == "threshold":
        return evaluate(
            y,
            probabilities,
            classes,
            positive_class=rule["positive_class"],
            threshold=rule["threshold"],
        )
    return evaluate(y, probabilities, classes)
