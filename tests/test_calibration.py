"""Calibration with a class bias undoes the prior shift of class weighting; its decision rule and
its bounds, and a bundle recalibrated on validation cases as a new version."""

import json

import keras
import numpy as np
import pytest
from scipy.stats import norm

from napari_scan_classifier.datasets import LabelledData, Split
from napari_scan_classifier.errors import InvalidBundleError
from napari_scan_classifier.evaluation import evaluate, fit_temperature, softmax
from napari_scan_classifier.models import Bundle, BundleMetadata, build_cnn3d, load_bundle
from napari_scan_classifier.models.bundle import save_bundle
from napari_scan_classifier.training import recalibrate_bundle
from napari_scan_classifier.training.calibration import (
    MIN_CASES_PER_CLASS,
    TEMPERATURE_BOUNDS,
    evaluate_by_rule,
    fit_calibration,
    operating_point,
    prior_correction,
)

CLASSES = ("normal", "lesion")
PRIOR = (0.8, 0.2)
SEPARATION = 1.5  # class means of a unit-variance score, 0 and 1.5
OVERCONFIDENCE = 2.0  # the network's logits are twice the log-odds


def weighted_model_logits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Cases drawn at PRIOR and the logits of a network trained with balanced class weights:
    its log-odds are the likelihood ratio alone (balanced prior), scaled by OVERCONFIDENCE."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < PRIOR[1]).astype(int)
    score = rng.normal(SEPARATION * y, 1.0)
    log_likelihood_ratio = SEPARATION * score - SEPARATION**2 / 2
    logits = np.stack([np.zeros(n), OVERCONFIDENCE * log_likelihood_ratio], axis=1)
    return logits, y


def bayes_accuracy() -> float:
    """Accuracy of the minimum-error rule for PRIOR: call lesion when LLR > log(0.8 / 0.2)."""
    cut = (np.log(PRIOR[0] / PRIOR[1]) + SEPARATION**2 / 2) / SEPARATION
    return PRIOR[0] * norm.cdf(cut) + PRIOR[1] * norm.sf(cut - SEPARATION)


def balanced_correction() -> np.ndarray:
    weights = {0: 1 / (2 * PRIOR[0]), 1: 1 / (2 * PRIOR[1])}  # sklearn's "balanced"
    return prior_correction(PRIOR, "class_weight", weights)


def test_the_log_prior_correction_of_each_imbalance_setting():
    np.testing.assert_allclose(balanced_correction(), [0.6931, -0.6931], atol=1e-4)
    np.testing.assert_allclose(
        prior_correction(PRIOR, "balanced_sampling"), [0.6931, -0.6931], atol=1e-4
    )
    np.testing.assert_allclose(prior_correction(PRIOR, "none"), [0.0, 0.0])


def test_a_class_bias_restores_accuracy_that_temperature_alone_cannot():
    val_logits, val_y = weighted_model_logits(500, seed=1)
    test_logits, test_y = weighted_model_logits(20_000, seed=2)
    majority = float(np.mean(test_y == 0))

    weighted = evaluate(test_y, softmax(test_logits), CLASSES)
    temperature_only = evaluate(
        test_y, softmax(test_logits, fit_temperature(val_logits, val_y)), CLASSES
    )
    calibration = fit_calibration(val_logits, val_y, CLASSES, PRIOR, balanced_correction())
    calibrated = evaluate(test_y, calibration.probabilities(test_logits), CLASSES)

    assert majority == pytest.approx(0.80, abs=0.01)
    assert weighted.accuracy == pytest.approx(0.773, abs=0.01)  # below the majority rate
    assert temperature_only.accuracy == weighted.accuracy  # one T never changes the argmax
    assert calibrated.accuracy >= majority + 0.03
    assert calibrated.accuracy == pytest.approx(bayes_accuracy(), abs=0.01)  # 0.849
    assert calibrated.ece < 0.03 < 0.09 < weighted.ece  # 0.023 vs 0.097
    assert calibration.temperature == pytest.approx(OVERCONFIDENCE, rel=0.3)  # 2.45 on 500 cases
    assert calibration.bias[1] - calibration.bias[0] == pytest.approx(np.log(0.25), abs=0.3)
    assert calibrated.auc == pytest.approx(weighted.auc, abs=1e-9)
    assert calibration.reliable and calibration.notes == ()


THREE = ("normal", "tumour", "infarct")
THREE_PRIOR = (0.7, 0.2, 0.1)
THREE_MEANS = np.array([[0.0, 0.0], [1.5, 0.0], [0.0, 1.5]])  # unit-variance 2D features


def three_class_logits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cases drawn at THREE_PRIOR, the logits of a network trained with balanced class weights
    (the class log-likelihoods alone, times OVERCONFIDENCE) and the true log-posteriors."""
    rng = np.random.default_rng(seed)
    y = rng.choice(3, n, p=THREE_PRIOR)
    features = rng.normal(THREE_MEANS[y], 1.0)
    log_likelihood = features @ THREE_MEANS.T - np.sum(THREE_MEANS**2, axis=1) / 2
    return OVERCONFIDENCE * log_likelihood, y, log_likelihood + np.log(THREE_PRIOR)


def test_three_classes_get_a_bias_each_and_beat_the_majority_rate():
    val_logits, val_y, _ = three_class_logits(900, seed=11)
    test_logits, test_y, log_posterior = three_class_logits(30_000, seed=12)
    majority = float(np.mean(test_y == 0))
    bayes = float(np.mean(log_posterior.argmax(axis=1) == test_y))
    weights = {k: 1 / (3 * p) for k, p in enumerate(THREE_PRIOR)}  # sklearn's "balanced"
    correction = prior_correction(THREE_PRIOR, "class_weight", weights)

    weighted = evaluate(test_y, softmax(test_logits), THREE)
    calibration = fit_calibration(val_logits, val_y, THREE, THREE_PRIOR, correction)
    calibrated = evaluate(test_y, calibration.probabilities(test_logits), THREE)

    assert majority == pytest.approx(0.70, abs=0.01)
    assert weighted.accuracy == pytest.approx(0.639, abs=0.01)  # below the majority rate
    assert calibrated.accuracy >= majority + 0.05
    assert calibrated.accuracy == pytest.approx(bayes, abs=0.005)  # 0.768
    assert calibrated.ece < 0.02 < 0.15 < weighted.ece  # 0.014 vs 0.160
    np.testing.assert_allclose(correction - correction[0], np.log(THREE_PRIOR) - np.log(0.7))
    relative_bias = np.array(calibration.bias) - calibration.bias[0]
    np.testing.assert_allclose(relative_bias, np.log(np.array(THREE_PRIOR) / 0.7), atol=0.15)
    assert calibration.temperature == pytest.approx(OVERCONFIDENCE, rel=0.1)  # 1.86
    assert calibration.record()["class_bias"].keys() == set(THREE)
    predicted = calibrated.confusion.sum(axis=0)
    assert predicted[0] > predicted[1] > predicted[2] > 0  # every class is still called


def test_the_cases_are_weighted_to_the_training_frequencies():
    """A balanced validation split still calibrates to the training data's 80/20."""
    logits, y = weighted_model_logits(4000, seed=3)
    balanced = np.concatenate([np.flatnonzero(y == 0)[:400], np.flatnonzero(y == 1)[:400]])
    calibration = fit_calibration(logits[balanced], y[balanced], CLASSES, PRIOR)
    test_logits, test_y = weighted_model_logits(20_000, seed=4)

    calibrated = evaluate(test_y, calibration.probabilities(test_logits), CLASSES)

    assert calibrated.accuracy == pytest.approx(bayes_accuracy(), abs=0.01)
    assert float(calibration.probabilities(test_logits)[:, 1].mean()) == pytest.approx(
        0.2, abs=0.02
    )


def test_too_few_cases_are_said_and_the_fit_leans_on_the_correction():
    logits, y = weighted_model_logits(400, seed=5)
    few = np.concatenate([np.flatnonzero(y == 0)[:4], np.flatnonzero(y == 1)[:3]])

    calibration = fit_calibration(logits[few], y[few], CLASSES, PRIOR, balanced_correction())

    assert not calibration.reliable
    assert calibration.cases_per_class == {"normal": 4, "lesion": 3}
    assert calibration.notes[0].startswith(
        "Calibration was fitted on 7 validation cases (normal: 4, lesion: 3); with fewer than "
        f"{MIN_CASES_PER_CLASS} of a class the probabilities are too uncertain to mean much"
    )
    assert calibration.record()["reliable"] is False
    assert 0.3 < calibration.temperature < 4.0
    assert calibration.bias[1] - calibration.bias[0] == pytest.approx(-1.386, abs=0.6)


def test_the_temperature_stays_within_its_bounds():
    rng = np.random.default_rng(6)
    y = np.tile([0, 1], 30)
    confidently_wrong = np.stack([np.zeros(60), 50.0 * rng.choice([-1, 1], 60)], axis=1)

    calibration = fit_calibration(confidently_wrong, y, CLASSES, (0.5, 0.5))

    assert calibration.temperature == pytest.approx(TEMPERATURE_BOUNDS[1])
    assert "reached its bound (20, allowed 0.05-20)" in calibration.notes[0]


def test_an_operating_point_keeps_the_target_sensitivity():
    logits, y = weighted_model_logits(1000, seed=7)
    calibration = fit_calibration(logits, y, CLASSES, PRIOR, balanced_correction())
    probabilities = calibration.probabilities(logits)

    rule = operating_point(probabilities, y, CLASSES, 0.9)
    report = evaluate_by_rule(y, probabilities, CLASSES, rule)

    assert rule["kind"] == "threshold" and rule["positive_class"] == "lesion"
    assert report.sensitivity >= 0.9 > evaluate(y, probabilities, CLASSES).sensitivity
    assert report.sensitivity - 0.9 < 1 / np.sum(y == 1) + 1e-9  # the highest such threshold
    assert f"at least {rule['threshold']:.3f}" in rule["description"]


def metadata(**changes) -> BundleMetadata:
    fields = {
        "name": "tiny",
        "version": 1,
        "classes": list(CLASSES),
        "modality": "CT",
        "task": "volume",
        "input_shape": (8, 16, 16),
        "target_spacing_mm": None,
        "intensity": {"kind": "ct_window", "center": 40, "width": 400},
        "architecture": "cnn3d",
    }
    return BundleMetadata(**{**fields, **changes})


def test_the_bundle_applies_bias_and_decision_rule():
    logits = np.array([[0.0, 1.0], [0.0, -0.5]])
    old = metadata(temperature=2.0)  # a bundle from before class biases
    biased = metadata(temperature=2.0, class_bias=[0.25, -0.25])
    threshold = metadata(
        decision_rule={"kind": "threshold", "positive_class": "lesion", "threshold": 0.3}
    )

    np.testing.assert_allclose(old.probabilities(logits), softmax(logits, 2.0))
    np.testing.assert_allclose(biased.probabilities(logits)[0], [0.5, 0.5])
    assert old.decide(old.probabilities(logits)).tolist() == [1, 0]
    assert threshold.decide(np.array([[0.75, 0.25], [0.65, 0.35]])).tolist() == [0, 1]
    with pytest.raises(InvalidBundleError, match="class_bias must list one number per class"):
        metadata(class_bias=[0.1])
    with pytest.raises(InvalidBundleError, match="a threshold needs two classes"):
        metadata(decision_rule={"kind": "threshold", "positive_class": "x", "threshold": 0.3})


def test_a_bundle_is_recalibrated_as_a_new_version(tmp_path):
    keras.utils.set_random_seed(0)
    model = build_cnn3d((8, 16, 16, 1), 2, width=4)
    training = {
        "class_counts": {"train": {"normal": 80, "lesion": 20}},
        "class_weights": {"normal": 0.625, "lesion": 2.5},
        "settings": {"imbalance": "class_weight"},
    }
    base = Bundle(metadata(training=training), model)
    rng = np.random.default_rng(8)
    y = np.array([0] * 24 + [1] * 12)
    x = rng.normal(0, 1, (36, 8, 16, 16)).astype(np.float32) + 0.5 * y[:, None, None, None]
    cases = Split(x.astype(np.float32), y, np.tile([0, 2], (36, 1)))
    data = LabelledData(CLASSES, {"val": cases}, "36 noise volumes")

    new = recalibrate_bundle(base, data)
    saved = load_bundle(save_bundle(new, tmp_path / "tiny-v2"))

    m = saved.metadata
    assert (m.version, m.parent_version) == (2, 1)
    assert saved.metadata == new.metadata and len(m.class_bias) == 2
    assert m.calibration["prior"] == {"normal": 0.8, "lesion": 0.2}
    assert m.calibration["fitted_on"] == {"cases": 36, "per_class": {"normal": 24, "lesion": 12}}
    assert m.calibration["recalibrated"]["from_version"] == 1
    assert (
        m.decision_rule["kind"] == "argmax"
        and "normal 0.80, lesion 0.20" in m.decision_rule["description"]
    )
    assert TEMPERATURE_BOUNDS[0] <= m.temperature <= TEMPERATURE_BOUNDS[1]
    stored = json.loads((tmp_path / "tiny-v2" / "bundle.json").read_text())
    assert stored["class_bias"] == m.class_bias and "Recalibrated from version 1" in m.model_card
    assert base.metadata.version == 1 and base.metadata.class_bias == []  # the base is untouched
