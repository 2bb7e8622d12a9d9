"""Answers from the scan and its left-right mirror image (``test_time_mirror``): inference, the
maps that explain the answer, and training, evaluation and calibration that measure that answer."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from model_fixtures import sphere_case, spread_logits, tiny_bundle
from test_training import FAST, phantom_cases

from napari_scan_classifier.errors import InvalidBundleError
from napari_scan_classifier.evaluation import evaluate
from napari_scan_classifier.inference import classify, logits_of, prepare_input
from napari_scan_classifier.models import Bundle, load_bundle, save_bundle
from napari_scan_classifier.preprocess import LEFT_RIGHT_AXIS, mirror_left_right
from napari_scan_classifier.results import summary_lines
from napari_scan_classifier.saliency import grad_cam, integrated_gradients
from napari_scan_classifier.saliency.gradients import attributions
from napari_scan_classifier.training import TrainingConfig, fit, train
from napari_scan_classifier.training.model import volume_logits
from napari_scan_classifier.training.pipeline import evaluate_bundle
from napari_scan_classifier.volume import Volume

GRU_GRID = (16, 32, 32)


def mirrored(bundle: Bundle) -> Bundle:
    return Bundle(replace(bundle.metadata, test_time_mirror=True), bundle.model)


@pytest.fixture(scope="module")
def cnn() -> Bundle:
    return spread_logits(tiny_bundle("cnn3d"))


@pytest.fixture(scope="module")
def gru() -> Bundle:
    return spread_logits(tiny_bundle("slice_gru", GRU_GRID))


def scan_with_a_lesion_on_one_side(seed: int = 3) -> Volume:
    """A sphere off the midline: its mirror image is another scan. The axial affine is diagonal,
    so the voxel array's last axis runs along world left-right."""
    volume, _ = sphere_case(seed, 1, (24, 32, 32))
    return volume


def flipped_left_right(volume: Volume) -> Volume:
    return Volume(np.flip(volume.voxels, axis=2).copy(), volume.affine, volume.modality)


def test_the_answer_is_the_mean_logits_of_the_scan_and_its_mirror_image(cnn):
    volume = scan_with_a_lesion_on_one_side()
    x, _ = prepare_input(volume, cnn)
    plain = logits_of(cnn, np.stack([x, mirror_left_right(x[None])[0]]))
    prediction = classify(volume, mirrored(cnn), method="none")
    np.testing.assert_allclose(prediction.logits, plain.mean(axis=0), rtol=1e-4, atol=1e-4)
    assert abs(plain[0] - plain[1]).max() > 0.01  # the two views differ: the mean is no copy


@pytest.mark.parametrize("method", ["none", "mc_dropout", "tta"])
def test_a_scan_and_its_mirror_image_get_the_same_answer(cnn, method):
    volume = scan_with_a_lesion_on_one_side()
    mirror = flipped_left_right(volume)
    both = classify([volume, mirror], mirrored(cnn), method=method, uncertainty_passes=4)
    np.testing.assert_allclose(both[0].logits, both[1].logits, rtol=1e-4, atol=1e-4)
    for name, p in both[0].probabilities.items():
        assert both[1].probabilities[name] == pytest.approx(p, abs=1e-4)
    if method == "mc_dropout":
        assert all(s > 0 for s in both[0].uncertainty["std"].values())
    plain = classify([volume, mirror], cnn, method="none")
    assert abs(plain[0].logits - plain[1].logits).max() > 0.01  # without it they differ
    assert both[0].uncertainty["mirrored"] and not plain[0].uncertainty["mirrored"]
    model_line = next(line for line in summary_lines(both[0].to_dict()) if "Model:" in line)
    assert "each the mean of the scan and its mirror image" in model_line


def test_per_slice_scores_are_averaged_too(gru):
    volume = scan_with_a_lesion_on_one_side()
    ours = classify(volume, mirrored(gru), method="none")
    theirs = classify(flipped_left_right(volume), mirrored(gru), method="none")
    assert ours.per_slice is not None and ours.per_slice.shape == (volume.shape[0], 2)
    np.testing.assert_allclose(ours.per_slice, theirs.per_slice, atol=1e-4, equal_nan=True)


@pytest.mark.parametrize("explain", [integrated_gradients, grad_cam])
def test_the_map_of_the_mirror_image_is_the_mirror_of_the_map(cnn, explain):
    volume = scan_with_a_lesion_on_one_side()
    ours = explain(volume, mirrored(cnn), target_class=1)
    theirs = explain(flipped_left_right(volume), mirrored(cnn), target_class=1)
    assert ours.values.max() == pytest.approx(1.0)
    np.testing.assert_allclose(np.flip(theirs.values, axis=2), ours.values, atol=0.02)
    plain = explain(volume, cnn, target_class=1)
    assert np.abs(plain.values - ours.values).max() > 0.05  # both views count


def test_integrated_gradients_add_up_to_the_mirrored_score_change(cnn):
    """Completeness holds for the answer the bundle gives: the mean of both views' logits."""
    bundle = mirrored(cnn)
    x, _ = prepare_input(scan_with_a_lesion_on_one_side(), bundle)
    baseline = np.full_like(x, x.mean())
    attribution = attributions(bundle, x, baseline, 1, steps=64, batch_size=16)
    logits = logits_of(bundle, np.stack([x, baseline]))
    log_p = logits[:, 1] - np.log(np.exp(logits).sum(axis=1))
    assert attribution.sum() == pytest.approx(log_p[0] - log_p[1], rel=0.05, abs=1e-3)


def test_the_left_right_axis_is_the_model_grids_last():
    batch = np.arange(2 * 2 * 3 * 4).reshape(2, 2, 3, 4)
    assert LEFT_RIGHT_AXIS == 2
    np.testing.assert_array_equal(mirror_left_right(batch), batch[:, :, :, ::-1])


def test_training_evaluates_the_mirrored_answer_and_fine_tuning_keeps_it():
    data = phantom_cases(["normal", "lesion"] * 10, seed=4)
    bundle = train(data, TrainingConfig(**FAST, epochs=1, test_time_mirror=True)).bundle
    m = bundle.metadata
    assert m.test_time_mirror and m.training["settings"]["test_time_mirror"] is True
    cases = data.split()
    both = volume_logits(bundle.model, cases.x, 4, mirror=True)
    views = [volume_logits(bundle.model, x, 4) for x in (cases.x, mirror_left_right(cases.x))]
    np.testing.assert_allclose(both, np.mean(views, axis=0), rtol=1e-6)
    assert np.abs(views[0] - views[1]).max() > 1e-3
    report = evaluate_bundle(bundle, data)
    expected = evaluate(cases.y, m.probabilities(both), m.classes)
    assert report.ece == pytest.approx(expected.ece) and report.auc == pytest.approx(expected.auc)

    kept = train(data, TrainingConfig(**FAST, epochs=1), base=bundle).bundle.metadata
    dropped = train(data, TrainingConfig(**FAST, epochs=1, test_time_mirror=False), base=bundle)
    assert kept.test_time_mirror and not dropped.bundle.metadata.test_time_mirror


def test_epochs_are_chosen_on_the_mirrored_answer(monkeypatch):
    """Early stopping and the best epoch judge the answer the bundle will give."""
    asked = []

    def recording(model, x, batch_size, *, mirror=False):
        asked.append(mirror)
        return volume_logits(model, x, batch_size, mirror=mirror)

    monkeypatch.setattr(fit, "volume_logits", recording)
    data = phantom_cases(["normal", "lesion"] * 10, seed=4)
    train(data, TrainingConfig(**FAST, epochs=2, test_time_mirror=True))
    assert len(asked) >= 2 and all(asked)
    asked.clear()
    train(data, TrainingConfig(**FAST, epochs=2))
    assert len(asked) >= 2 and not any(asked)


def test_the_setting_is_saved_and_checked(tmp_path, cnn):
    saved = save_bundle(mirrored(cnn), tmp_path / "mirrored")
    assert load_bundle(saved).metadata.test_time_mirror
    record = json.loads((saved / "bundle.json").read_text())
    assert record["test_time_mirror"] is True
    record["test_time_mirror"] = "yes"
    (saved / "bundle.json").write_text(json.dumps(record))
    with pytest.raises(InvalidBundleError, match="test_time_mirror must be true or false"):
        load_bundle(saved)
    older = save_bundle(cnn, tmp_path / "older")
    record = json.loads((older / "bundle.json").read_text())
    del record["test_time_mirror"]
    (older / "bundle.json").write_text(json.dumps(record))
    assert not load_bundle(older).metadata.test_time_mirror
