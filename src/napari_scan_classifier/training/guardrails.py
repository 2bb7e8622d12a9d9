"""Guardrails for fine-tuning: say when the validation cases are too few to tell, compare the new
version with its base on the same cases, and refuse to grow classes nobody asked for.

The comparison is a paired, stratified bootstrap of the AUC difference (new minus base) on the
validation cases: each resample draws the cases of every class with replacement (so every
resample has both positives and negatives, which an AUC needs), scores both models on the same
draw, and the 2.5th and 97.5th percentiles of the differences give the 95 % interval. Verdict:
"better" when the interval lies above 0, "worse" when below, else "not distinguishable".
``scipy.stats.bootstrap`` resamples without strata, so on a few cases many of its resamples hold
one class and have no AUC; hence the few lines here, which weigh the case pairs of all
resamples at once instead of ranking each resample.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from napari_scan_classifier.datasets import n_cases
from napari_scan_classifier.errors import TrainingError
from napari_scan_classifier.training.calibration import MIN_CASES_PER_CLASS

BOOTSTRAP_RESAMPLES = 2000
BETTER, SAME, WORSE = "better", "not distinguishable", "worse"


@dataclass(frozen=True)
class Comparison:
    """The new version against its base on the same validation cases."""

    base_version: int
    cases: int
    auc_base: float
    auc_new: float
    difference: float  # new minus base
    ci95: tuple[float, float]
    resamples: int
    verdict: str

    @property
    def message(self) -> str:
        """One sentence for the CLI and the Train dock."""
        low, high = self.ci95
        return (
            f"Compared with version {self.base_version} on the same {self.cases} validation "
            f"cases: AUC {self.auc_base:.3f} -> {self.auc_new:.3f}, difference "
            f"{self.difference:+.3f} (95 % interval {low:+.3f} to {high:+.3f}): {self.verdict}."
        )

    def record(self) -> dict[str, Any]:
        """What ``bundle.json`` keeps (under ``training.comparison_with_base``)."""
        values = asdict(self)
        for key in ("auc_base", "auc_new", "difference"):
            values[key] = round(values[key], 6)
        values["ci95"] = [round(v, 6) for v in self.ci95]
        values["message"] = self.message
        return values


def too_few_warning(val_counts: Mapping[str, int]) -> str | None:
    """The warning when a class has fewer than ``MIN_CASES_PER_CLASS`` (10) validation cases."""
    if min(val_counts.values()) >= MIN_CASES_PER_CLASS:
        return None
    listing = ", ".join(f"{name}: {n}" for name, n in val_counts.items())
    return (
        f"Too few validation cases to tell ({listing}; at least {MIN_CASES_PER_CLASS} per "
        "class are needed): the model was saved, but its validation figures, its calibration "
        "and its comparison with the base model may be chance. Add cases before relying on it."
    )


def macro_auc(y: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean one-vs-rest AUC over the classes present (binary: the AUC)."""
    y = np.asarray(y, dtype=int)
    return float(_weighted_macro_auc(y, probabilities, np.ones((1, len(y))))[0])


def compare_with_base(
    y: np.ndarray,
    new: np.ndarray,
    base: np.ndarray,
    base_version: int,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> Comparison:
    """Paired stratified bootstrap of the AUC difference of ``new`` and ``base`` probabilities
    (n, classes) on labels ``y`` (see the module doc)."""
    y = np.asarray(y, dtype=int)
    rng = np.random.default_rng(seed)
    # A resample is how often it draws each case: per class, a multinomial over its cases.
    draws = np.zeros((resamples, len(y)))
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        draws[:, rows] = rng.multinomial(len(rows), np.full(len(rows), 1 / len(rows)), resamples)
    differences = _weighted_macro_auc(y, new, draws) - _weighted_macro_auc(y, base, draws)
    low, high = (float(v) for v in np.percentile(differences, [2.5, 97.5]))
    verdict = BETTER if low > 0 else WORSE if high < 0 else SAME
    auc_new, auc_base = macro_auc(y, new), macro_auc(y, base)
    return Comparison(
        base_version, len(y), auc_base, auc_new, auc_new - auc_base, (low, high), resamples, verdict
    )


def _weighted_macro_auc(y: np.ndarray, probabilities: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Macro one-vs-rest AUC for each row of ``draws`` (resamples, cases), which says how often
    a resample holds each case: the Mann-Whitney statistic with every pair weighted by the
    product of its cases' counts, for all resamples at once."""
    p = np.asarray(probabilities, dtype=float)
    aucs = []
    for c in np.unique(y):
        positive, negative = np.flatnonzero(y == c), np.flatnonzero(y != c)
        s_pos, s_neg = p[positive, c][:, None], p[negative, c][None, :]
        wins = (s_pos > s_neg) + 0.5 * (s_pos == s_neg)
        w_pos, w_neg = draws[:, positive], draws[:, negative]
        pairs = w_pos.sum(axis=1) * w_neg.sum(axis=1)
        aucs.append(np.einsum("rp,pq,rq->r", w_pos, wins, w_neg) / pairs)
    return np.mean(aucs, axis=0)


def refuse_new_classes(
    new: Sequence[str], known: Sequence[str], totals: Mapping[str, int], base_version: int
) -> None:
    """Raise TrainingError explaining that fine-tuning would grow classes nobody asked for."""
    listing = ", ".join(f"'{name}' ({n_cases(totals[name])})" for name in new)
    empty = [name for name in known if not totals.get(name)]
    hints = []
    for name in new:
        close = difflib.get_close_matches(name.lower(), [k.lower() for k in known], n=1, cutoff=0.6)
        if close:
            match = next(k for k in known if k.lower() == close[0])
            hints.append(f"'{name}' looks like the base's '{match}'")
    left_empty = f"; the base's {', '.join(map(repr, empty))} would have no cases" if empty else ""
    hint = f" ({'; '.join(hints)})" if hints else ""
    raise TrainingError(
        f"The cases bring classes the base model (version {base_version}) does not know: "
        f"{listing}. Fine-tuning would grow a new output for each{left_empty}. Label the cases "
        f"with the base's classes {list(known)}{hint}, or ask for new classes (--new-classes, "
        "or 'Allow new classes' in the Train dock)."
    )
