"""Fine-tuning guardrails: the verdict against the base, too few cases said, new classes refused."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from test_training import FAST, phantom_cases, untrained_bundle

from napari_scan_classifier.errors import TrainingError
from napari_scan_classifier.training import TrainingConfig, train
from napari_scan_classifier.training.guardrails import (
    compare_with_base,
    macro_auc,
    too_few_warning,
)


def two_class(p1: np.ndarray) -> np.ndarray:
    return np.stack([1 - p1, p1], axis=1)


def informative_and_random(n_per_class: int, seed: int) -> tuple[np.ndarray, ...]:
    """Labels, probabilities that rank the cases well (AUC ~0.9) and ones that do not (~0.5)."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n_per_class)
    good = 1 / (1 + np.exp(-(rng.normal(0, 1, len(y)) + 2.5 * y)))
    random = rng.random(len(y))
    return y, two_class(good), two_class(random)


def test_macro_auc_matches_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    p = rng.dirichlet([1, 1, 1], 60) + np.eye(3)[y] * 0.3
    p /= p.sum(axis=1, keepdims=True)

    assert macro_auc(y, p) == pytest.approx(roc_auc_score(y, p, multi_class="ovr"))
    assert macro_auc(y[:20] % 2, two_class(p[:20, 1])) == pytest.approx(
        roc_auc_score(y[:20] % 2, p[:20, 1])
    )


def test_a_clearly_better_version_is_better():
    y, good, random = informative_and_random(40, seed=1)

    comparison = compare_with_base(y, good, random, base_version=3)

    assert comparison.verdict == "better"
    assert comparison.auc_new == pytest.approx(roc_auc_score(y, good[:, 1]))
    assert comparison.auc_base == pytest.approx(roc_auc_score(y, random[:, 1]))
    assert comparison.difference == pytest.approx(comparison.auc_new - comparison.auc_base)
    assert 0 < comparison.ci95[0] < comparison.difference < comparison.ci95[1]
    assert comparison.cases == 80 and comparison.resamples == 2000


def test_a_clearly_worse_version_is_worse():
    y, good, random = informative_and_random(40, seed=1)

    comparison = compare_with_base(y, random, good, base_version=3)

    assert comparison.verdict == "worse"
    assert comparison.ci95[0] < comparison.difference < comparison.ci95[1] < 0


def test_four_cases_cannot_tell_a_fall_in_auc_from_chance():
    """The fine-tune of the issue: 4 validation cases, AUC 0.50 -> 0.25."""
    y = np.array([0, 0, 1, 1])
    base = two_class(np.array([0.2, 0.6, 0.4, 0.5]))  # AUC 0.50
    new = two_class(np.array([0.5, 0.7, 0.6, 0.4]))  # AUC 0.25

    comparison = compare_with_base(y, new, base, base_version=1)

    assert (comparison.auc_base, comparison.auc_new) == (0.5, 0.25)
    assert comparison.verdict == "not distinguishable"
    assert comparison.ci95[0] < 0 <= comparison.ci95[1]  # 2 cases a class: a coarse interval
    assert comparison.message.startswith(
        "Compared with version 1 on the same 4 validation cases: AUC 0.500 -> 0.250, "
        "difference -0.250 (95 % interval "
    )
    assert comparison.message.endswith("): not distinguishable.")
    assert comparison.record()["verdict"] == "not distinguishable"


def test_too_few_validation_cases_are_said_in_words():
    assert too_few_warning({"normal": 10, "lesion": 12}) is None
    assert too_few_warning({"normal": 2, "lesion": 2}) == (
        "Too few validation cases to tell (normal: 2, lesion: 2; at least 10 per class are "
        "needed): the model was saved, but its validation figures, its calibration and its "
        "comparison with the base model may be chance. Add cases before relying on it."
    )


def test_a_fine_tune_that_would_grow_classes_is_refused_unless_asked():
    data = phantom_cases(["normal", "Lesion"] * 6, seed=4)

    with pytest.raises(TrainingError) as refused:
        train(data, TrainingConfig(**FAST, epochs=1), base=untrained_bundle())

    assert str(refused.value) == (
        "The cases bring classes the base model (version 1) does not know: 'Lesion' (6 cases). "
        "Fine-tuning would grow a new output for each; the base's 'lesion' would have no cases. "
        "Label the cases with the base's classes ['normal', 'lesion'] ('Lesion' looks like the "
        "base's 'lesion'), or ask for new classes (--new-classes, or 'Allow new classes' in the "
        "Train dock)."
    )
