"""Evaluation: metrics against scikit-learn and by hand, calibration, temperature, figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, recall_score, roc_auc_score, roc_curve

from napari_scan_classifier.evaluation import (
    confusion_lines,
    ece_by_chance,
    ece_text,
    evaluate,
    expected_calibration_error,
    fit_temperature,
    per_class_lines,
    plot_confusion,
    plot_history,
    plot_reliability,
    plot_roc,
    reliability_bins,
    save_figures,
    softmax,
)

BINARY = ("normal", "lesion")
THREE = ("normal", "benign", "malignant")


def _binary_example() -> tuple[np.ndarray, np.ndarray]:
    """Eight cases, four lesions; at threshold 0.5: TP 3, FN 1, TN 3, FP 1."""
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    p_lesion = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1])
    return y, p_lesion


def _multiclass_example(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + 2.0 * np.eye(3)[y]
    return y, softmax(logits)


def test_binary_metrics_by_hand_and_against_sklearn() -> None:
    y, p_lesion = _binary_example()
    report = evaluate(y, p_lesion, BINARY)

    assert report.positive_class == "lesion"
    np.testing.assert_array_equal(report.confusion, [[3, 1], [1, 3]])
    assert report.sensitivity == pytest.approx(3 / 4)
    assert report.specificity == pytest.approx(3 / 4)
    assert report.accuracy == pytest.approx(6 / 8)
    assert report.auc == pytest.approx(roc_auc_score(y, p_lesion))
    assert report.auc == pytest.approx(13 / 16)  # 13 of 16 lesion/normal pairs ranked right
    assert (report.n, report.class_counts) == (8, {"normal": 4, "lesion": 4})
    assert list(report.roc_curves) == ["lesion"]
    assert report.roc_curves["lesion"].tpr[-1] == 1.0


def test_binary_threshold_names_and_positive_class() -> None:
    y, p_lesion = _binary_example()
    names = np.array(BINARY)[y]
    two_columns = np.stack([1 - p_lesion, p_lesion], axis=1)

    strict = evaluate(names, two_columns, BINARY, threshold=0.75)
    np.testing.assert_array_equal(strict.confusion, [[4, 0], [2, 2]])
    assert (strict.sensitivity, strict.specificity) == (0.5, 1.0)

    flipped = evaluate(y, two_columns, BINARY, positive_class="normal")
    assert flipped.sensitivity == pytest.approx(3 / 4)
    assert flipped.auc == pytest.approx(roc_auc_score(y == 0, 1 - p_lesion))
    assert list(flipped.roc_curves) == ["normal"]


def test_multiclass_metrics_equal_sklearn() -> None:
    y, p = _multiclass_example()
    report = evaluate(y, p, THREE)
    predicted = p.argmax(axis=1)

    assert report.auc == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert report.accuracy == pytest.approx(accuracy_score(y, predicted))
    assert report.sensitivity == pytest.approx(recall_score(y, predicted, average="macro"))
    specificities = [recall_score(y != c, predicted != c) for c in range(3)]
    assert report.specificity == pytest.approx(np.mean(specificities))
    assert report.positive_class is None
    assert set(report.roc_curves) == set(THREE)

    malignant = evaluate(y, p, THREE, positive_class="malignant")
    assert malignant.sensitivity == pytest.approx(recall_score(y == 2, predicted == 2))
    assert malignant.specificity == pytest.approx(specificities[2])


def test_multiclass_confusion_by_hand() -> None:
    y = [0, 0, 1, 1, 2, 2]
    p = np.array(
        [
            [0.8, 0.1, 0.1],
            [0.2, 0.7, 0.1],  # normal called benign
            [0.1, 0.8, 0.1],
            [0.1, 0.6, 0.3],
            [0.1, 0.2, 0.7],
            [0.5, 0.2, 0.3],  # malignant called normal
        ]
    )
    report = evaluate(y, p, THREE)
    np.testing.assert_array_equal(report.confusion, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    assert report.sensitivity == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    # specificity per class: normal 3/4, benign 3/4, malignant 4/4
    assert report.specificity == pytest.approx((0.75 + 0.75 + 1.0) / 3)


def test_each_class_against_the_rest_equals_sklearn() -> None:
    y, p = _multiclass_example()
    report = evaluate(y, p, THREE)
    predicted = p.argmax(axis=1)

    assert list(report.per_class) == list(THREE)
    for c, name in enumerate(THREE):
        m = report.per_class[name]
        assert m.n == int(np.sum(y == c))
        assert m.auc == pytest.approx(roc_auc_score(y == c, p[:, c]))
        assert m.auc == pytest.approx(report.roc_curves[name].auc)
        assert m.sensitivity == pytest.approx(recall_score(y == c, predicted == c))
        assert m.specificity == pytest.approx(recall_score(y != c, predicted != c))
        fpr, tpr, _ = roc_curve(y == c, p[:, c])
        np.testing.assert_allclose(report.roc_curves[name].fpr, fpr)
        np.testing.assert_allclose(report.roc_curves[name].tpr, tpr)
    assert report.auc == pytest.approx(np.mean([m.auc for m in report.per_class.values()]))
    np.testing.assert_array_equal(report.confusion, confusion_matrix(y, predicted))
    assert report.confusion.shape == (3, 3) and report.auc_label == "macro AUC"
    as_dict = report.to_dict()
    assert as_dict["per_class"]["benign"] == report.per_class["benign"].to_dict()
    assert evaluate(*_binary_example(), BINARY).auc_label == "AUC"


def test_per_class_and_confusion_lines_by_hand() -> None:
    y = [0, 0, 1, 1, 2, 2]
    p = np.array(
        [
            [0.8, 0.1, 0.1],
            [0.2, 0.7, 0.1],
            [0.1, 0.8, 0.1],
            [0.1, 0.6, 0.3],
            [0.1, 0.2, 0.7],
            [0.5, 0.2, 0.3],
        ]
    )
    report = evaluate(y, p, THREE)

    # normal's scores 0.8, 0.2 against 0.1, 0.1, 0.1, 0.5: 7 of 8 pairs ranked right
    assert per_class_lines(report) == [
        "normal: n 2, AUC 0.875, sensitivity 0.500, specificity 0.750",
        "benign: n 2, AUC 0.875, sensitivity 1.000, specificity 0.750",
        "malignant: n 2, AUC 0.938, sensitivity 0.500, specificity 1.000",
    ]
    assert confusion_lines(report) == [
        "true \\ called  normal  benign  malignant",
        "normal              1       1          0",
        "benign              0       2          0",
        "malignant           1       0          1",
    ]


def test_auc_undefined_with_one_class_is_nan_with_a_note() -> None:
    report = evaluate([1, 1, 1], [0.9, 0.6, 0.2], BINARY)
    assert math.isnan(report.auc)
    assert "AUC is undefined" in report.notes[0] and "normal" in report.notes[0]
    assert math.isnan(report.specificity)
    assert report.sensitivity == pytest.approx(2 / 3)
    assert report.roc_curves == {}
    as_dict = report.to_dict()
    assert as_dict["auc"] is None and as_dict["specificity"] is None
    json.dumps(as_dict, allow_nan=False)


def test_to_dict_is_json_with_the_headline_keys() -> None:
    y, p = _multiclass_example(60)
    as_dict = json.loads(json.dumps(evaluate(y, p, THREE).to_dict(), allow_nan=False))
    assert {"auc", "accuracy", "sensitivity", "specificity", "ece", "n"} <= set(as_dict)
    assert as_dict["n"] == 60
    assert as_dict["roc"]["benign"]["thresholds"][0] is None  # sklearn's leading +inf


def test_bad_inputs_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        evaluate([0, 1], np.array([[0.5, 0.6], [0.2, 0.8]]), BINARY)
    with pytest.raises(ValueError, match="shape"):
        evaluate([0, 1, 2], np.full((3, 2), 0.5), THREE)
    with pytest.raises(ValueError, match="not among the class names"):
        evaluate(["normal", "tumour"], [0.1, 0.9], BINARY)
    with pytest.raises(ValueError, match="positive_class"):
        evaluate([0, 1], [0.1, 0.9], BINARY, positive_class="tumour")
    with pytest.raises(ValueError, match="non-empty"):
        evaluate([], np.zeros((0, 2)), BINARY)


def test_ece_by_hand() -> None:
    # four cases at 0.85, three right; two at 0.55, one right
    p = np.array([[0.85, 0.15]] * 4 + [[0.55, 0.45]] * 2)
    y = np.array([0, 0, 0, 1, 0, 1])
    assert expected_calibration_error(y, p) == pytest.approx(4 / 6 * 0.10 + 2 / 6 * 0.05)

    bins = reliability_bins(y, p)
    np.testing.assert_array_equal(bins.counts, [0, 0, 0, 0, 0, 2, 0, 0, 4, 0])
    assert bins.accuracy[8] == pytest.approx(0.75) and bins.confidence[8] == pytest.approx(0.85)
    assert np.isnan(bins.accuracy[0])


def test_ece_is_zero_when_every_bin_is_calibrated() -> None:
    # 80 % confident and right 8 times in 10; 60 % confident and right 3 times in 5
    p = np.array([[0.2, 0.8]] * 10 + [[0.6, 0.4]] * 5)
    y = np.array([1] * 8 + [0] * 2 + [0] * 3 + [1] * 2)
    assert expected_calibration_error(y, p) == pytest.approx(0.0, abs=1e-12)
    assert evaluate(y, p, BINARY).ece == pytest.approx(0.0, abs=1e-12)


def test_bin_edges_hold_their_upper_bound() -> None:
    bins = reliability_bins(np.array([0, 0]), np.array([[0.3, 0.7], [0.7, 0.3]]), 10)
    assert bins.counts[6] == 2  # 0.7 lies in (0.6, 0.7], not (0.7, 0.8]


def test_softmax_is_stable_and_tempered() -> None:
    p = softmax(np.array([[1000.0, 1000.0], [0.0, np.log(3.0)]]))
    np.testing.assert_allclose(p, [[0.5, 0.5], [0.25, 0.75]])
    hot = softmax(np.array([[0.0, 2.0]]), temperature=2.0)
    np.testing.assert_allclose(hot, softmax(np.array([[0.0, 1.0]])))
    with pytest.raises(ValueError, match="positive"):
        softmax(np.zeros((1, 2)), temperature=0.0)
    with pytest.raises(ValueError, match="one-logit"):
        softmax(np.zeros(4))


@pytest.mark.parametrize("k", [2, 4])
def test_fit_temperature_recovers_overconfidence(k: int) -> None:
    rng = np.random.default_rng(k)
    true_logits = rng.normal(scale=2.0, size=(4000, k))
    probabilities = softmax(true_logits)
    draws = rng.random(len(true_logits))[:, None] > probabilities.cumsum(axis=1)
    y = np.minimum(draws.sum(axis=1), k - 1)  # sampled from softmax(true_logits)
    logits = 5.0 * true_logits

    temperature = fit_temperature(logits, y)

    assert temperature == pytest.approx(5.0, rel=0.1)
    before = expected_calibration_error(y, softmax(logits))
    after = expected_calibration_error(y, softmax(logits, temperature))
    assert after < before / 3
    assert after < 0.03


def test_fit_temperature_checks_labels() -> None:
    with pytest.raises(ValueError, match="class index"):
        fit_temperature(np.zeros((3, 2)), [0, 1, 2])


def test_figures_render_headless_and_save_as_png(tmp_path: Path) -> None:
    y, p = _multiclass_example(90)
    report = evaluate(y, p, THREE)
    history = {"loss": [0.9, 0.6, 0.5], "val_loss": [1.0, 0.7, 0.65], "auc": [0.6, 0.8, 0.85]}
    history["val_auc"] = [0.55, 0.75, 0.8]

    for figure in (plot_roc(report), plot_confusion(report), plot_reliability(report)):
        assert figure.axes
    panels = plot_history(history).axes
    assert [ax.get_title() for ax in panels] == ["loss", "auc"]
    assert len(panels[0].lines) == 2
    validation_only = plot_history(
        {"loss": [0.9, 0.6], "val_loss": [1.0, 0.7], "val_auc": [0.6, 0.7]}
    )
    assert [line.get_label() for line in validation_only.axes[1].lines] == ["validation"]

    paths = save_figures(report, history, tmp_path / "figures")

    assert [p.name for p in paths] == ["roc.png", "confusion.png", "reliability.png", "history.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == sorted(p.name for p in paths)


def test_three_class_figures_show_each_class() -> None:
    y, p = _multiclass_example(90)
    report = evaluate(y, p, THREE)

    roc = plot_roc(report).axes[0]
    labels = [line.get_label() for line in roc.lines]
    assert labels == [
        *(f"{name} (AUC {roc_auc_score(y == c, p[:, c]):.3f})" for c, name in enumerate(THREE)),
        "chance",
    ]
    assert roc.get_title() == f"ROC: macro AUC {report.auc:.3f} (n = 90)"
    np.testing.assert_allclose(roc.lines[2].get_xdata(), report.roc_curves["malignant"].fpr)

    matrix = plot_confusion(report).axes[0]
    counts = [int(text.get_text().split("\n")[0]) for text in matrix.texts]
    assert counts == confusion_matrix(y, p.argmax(axis=1)).ravel().tolist()
    assert [t.get_text() for t in matrix.get_yticklabels()] == list(THREE)

    reliability = plot_reliability(report).axes
    heights = [bar.get_height() for bar in reliability[1].patches]
    assert heights == report.reliability.counts.tolist() and sum(heights) == 90
    chance = report.ece_by_chance[0]
    assert (
        reliability[0].get_title() == f"Reliability (ECE {report.ece:.3f}; {chance:.3f} by chance)"
    )


def test_figures_for_a_one_class_report(tmp_path: Path) -> None:
    report = evaluate([1, 1], [0.9, 0.2], BINARY)
    paths = save_figures(report, None, tmp_path)
    assert [p.name for p in paths] == ["roc.png", "confusion.png", "reliability.png"]
    with pytest.raises(ValueError, match="empty"):
        plot_history({"loss": []})


def _dirichlet_probabilities(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet((0.6, 0.6, 0.6), size=n)


def _labels_drawn_from(probabilities: np.ndarray, seed: int) -> np.ndarray:
    """Labels of a perfectly calibrated model: each case's class drawn from its probabilities."""
    rng = np.random.default_rng(seed)
    cumulative = probabilities.cumsum(axis=1)
    draws = rng.random((len(probabilities), 1))
    return np.minimum((draws > cumulative).sum(axis=1), probabilities.shape[1] - 1)


@pytest.mark.parametrize("n", [40, 150])
def test_ece_by_chance_is_what_a_calibrated_model_shows(n: int) -> None:
    p = _dirichlet_probabilities(n, seed=n)
    mean, top = ece_by_chance(p)

    observed = np.array(
        [evaluate(_labels_drawn_from(p, seed), p, ["a", "b", "c"]).ece for seed in range(300)]
    )

    assert 0.02 < mean < top
    assert observed.mean() == pytest.approx(mean, abs=0.01)
    assert 0.01 <= np.mean(observed > top) <= 0.12  # its 95th percentile, within sampling


def test_ece_by_chance_shrinks_with_more_cases_and_flags_overconfidence() -> None:
    few, many = (
        ece_by_chance(_dirichlet_probabilities(40, 1)),
        ece_by_chance(_dirichlet_probabilities(2000, 1)),
    )
    assert many[0] < few[0] / 3

    sure = np.tile([0.95, 0.03, 0.02], (200, 1))  # 95 % sure, right 70 % of the time
    y = np.where(np.arange(200) % 10 < 7, 0, 1)
    report = evaluate(y, sure, ["a", "b", "c"])

    assert report.ece == pytest.approx(0.25)
    assert report.ece > report.ece_by_chance[1]
    assert report.to_dict()["ece_by_chance"] == pytest.approx(report.ece_by_chance[0])
    assert report.ece_by_chance == evaluate(y, sure, ["a", "b", "c"]).ece_by_chance
    assert ece_text(report) == (
        f"0.250 ({report.ece_by_chance[0]:.3f} by chance, 95 % {report.ece_by_chance[1]:.3f})"
    )
