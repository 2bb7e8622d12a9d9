"""classify: calibrated probabilities, batching, per-slice scores, uncertainty, input checks."""

from __future__ import annotations

import json
import threading
from dataclasses import replace

import keras
import numpy as np
import pytest
from model_fixtures import CLASSES, GRID, TEMPERATURE, sphere_case, tiny_bundle
from scipy.special import entr

from napari_scan_classifier.backend import device_name
from napari_scan_classifier.errors import CancelledError, InvalidInputError
from napari_scan_classifier.inference import classify, prepare_input
from napari_scan_classifier.models import Bundle, MCDropout
from napari_scan_classifier.preprocess import (
    LEFT_RIGHT_AXIS,
    Box,
    model_grid,
    prepare,
    slice_index_map,
)
from napari_scan_classifier.results import summary_lines
from napari_scan_classifier.volume import Volume

GRU_GRID = (16, 32, 32)


@pytest.fixture(scope="module")
def cnn() -> Bundle:
    bundle = tiny_bundle("cnn3d")
    # Logits of an untrained net are near 0; spread them so calibration is visible.
    dense = bundle.model.get_layer("volume_logits")
    dense.kernel.assign(dense.kernel * 40.0)
    dense.bias.assign([1.5, -1.5])
    return bundle


@pytest.fixture(scope="module")
def gru() -> Bundle:
    return tiny_bundle("slice_gru", GRU_GRID)


def scans(n: int = 3) -> list[Volume]:
    shapes = [(20, 40, 36), (40, 30, 30), (32, 32, 32)]
    return [sphere_case(10 + i, i % 2, shapes[i % 3])[0] for i in range(n)]


def manual_softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = np.exp((logits - logits.max()) / temperature)
    return z / z.sum()


def test_probabilities_are_the_tempered_softmax_of_the_model_logits(cnn):
    volume = scans(1)[0]
    prediction = classify(volume, cnn, method="none")

    meta = cnn.metadata
    x, _ = prepare(volume, meta.input_shape, meta.target_spacing_mm, meta.intensity)
    logits = cnn.model.predict_on_batch(x[None, ..., None])["volume"][0]
    np.testing.assert_allclose(prediction.logits, logits, rtol=1e-5, atol=1e-5)
    expected = manual_softmax(logits.astype(float), TEMPERATURE)
    assert abs(logits[0] - logits[1]) > 1  # so the temperature matters
    np.testing.assert_allclose(list(prediction.probabilities.values()), expected, rtol=1e-5)
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0)
    assert list(prediction.probabilities) == CLASSES
    assert prediction.predicted_class == CLASSES[int(np.argmax(logits))]
    assert (prediction.model_name, prediction.model_version) == ("sphere-test", 1)


def test_the_class_bias_and_the_decision_rule_decide_the_class(cnn):
    volume = scans(1)[0]
    plain = classify(volume, cnn, method="none")
    winner = CLASSES.index(plain.predicted_class)
    bias = [0.0, 0.0]
    bias[winner] = -40.0  # far more than the tempered logits differ
    biased = Bundle(replace(cnn.metadata, class_bias=bias), cnn.model)
    threshold = Bundle(
        replace(
            cnn.metadata,
            decision_rule={"kind": "threshold", "positive_class": CLASSES[1], "threshold": 1e-6},
        ),
        cnn.model,
    )

    shifted = classify(volume, biased, method="none")
    called = classify(volume, threshold, method="none")

    expected = manual_softmax(plain.logits / TEMPERATURE + np.array(bias), 1.0)
    np.testing.assert_allclose(list(shifted.probabilities.values()), expected, rtol=1e-6)
    assert shifted.predicted_class == CLASSES[1 - winner] != plain.predicted_class
    assert called.probabilities == plain.probabilities and called.predicted_class == CLASSES[1]


def test_an_operating_point_travels_with_the_result_and_is_said(cnn):
    """A threshold rule (a target sensitivity) calls the class away from the most probable
    one, so the result records it and the summary says it; the argmax rule goes unsaid."""
    rule = {
        "kind": "threshold",
        "positive_class": CLASSES[1],
        "threshold": 0.3127,
        "target_sensitivity": 0.9,
        "description": "'lesion' when its calibrated probability is at least 0.313: ...",
    }
    threshold = Bundle(replace(cnn.metadata, decision_rule=rule), cnn.model)
    volume = scans(1)[0]

    called = classify(volume, threshold, method="none").to_dict()
    plain = classify(volume, cnn, method="none").to_dict()

    assert called["decision_rule"] == rule and plain["decision_rule"] == {"kind": "argmax"}
    assert json.loads(json.dumps(called))["decision_rule"] == rule
    assert summary_lines(called, banner=False)[1] == (
        "Decision: lesion when p(lesion) >= 0.313 (operating point for sensitivity 0.90)"
    )
    assert not any(line.startswith("Decision:") for line in summary_lines(plain))


@pytest.mark.parametrize("name", ["cnn", "gru"])
def test_a_batch_gives_what_one_by_one_gives(name, request):
    bundle = request.getfixturevalue(name)
    volumes = scans(3)
    batch = classify(volumes, bundle, method="none")
    assert isinstance(batch, list) and len(batch) == 3
    for volume, together in zip(volumes, batch, strict=True):
        alone = classify(volume, bundle, method="none")
        np.testing.assert_allclose(together.logits, alone.logits, rtol=1e-4, atol=1e-5)
        if name == "gru":
            np.testing.assert_allclose(together.per_slice, alone.per_slice, atol=1e-5)


def test_slice_scores_land_on_the_source_slices(gru):
    volume = scans(2)[1]  # 40 slices onto a 16-slice model grid
    prediction = classify(volume, gru, method="none")
    assert prediction.per_slice.shape == (40, len(CLASSES))
    np.testing.assert_allclose(prediction.per_slice.sum(axis=1), 1.0, rtol=1e-6)

    meta = gru.metadata
    x, grid = prepare(volume, meta.input_shape, None, meta.intensity)
    slices = gru.model.predict_on_batch(x[None, ..., None])["slices"][0].astype(float)
    z = np.exp(slices - slices.max(axis=1, keepdims=True))
    expected = slice_index_map(grid).apply(z / z.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(prediction.per_slice, expected, atol=1e-5)


def test_slices_outside_a_box_have_no_score(gru):
    volume = scans(2)[1]
    prediction = classify(volume, gru, box=Box((10, 0, 0), (26, 30, 30)), method="none")
    finite = np.isfinite(prediction.per_slice[:, 0])
    assert finite[10:26].all() and not finite[:9].any() and not finite[27:].any()


def test_cnn3d_has_no_slice_scores(cnn):
    assert classify(scans(1)[0], cnn, method="none").per_slice is None


def test_mc_dropout_spreads_and_none_does_not(cnn):
    volume = scans(1)[0]
    sampled = classify(volume, cnn, uncertainty_passes=8)
    plain = classify(volume, cnn, method="none")

    assert sampled.uncertainty["passes"] == 8
    assert all(s > 1e-4 for s in sampled.uncertainty["std"].values())
    assert all(s == 0 for s in plain.uncertainty["std"].values())
    assert plain.uncertainty["mutual_information"] == 0
    assert sampled.uncertainty["mutual_information"] > 0
    # Dropout does not change the plain prediction.
    assert sampled.probabilities == pytest.approx(plain.probabilities)
    mean = np.array(list(sampled.uncertainty["mean"].values()))
    assert sampled.uncertainty["predictive_entropy"] == pytest.approx(entr(mean).sum())
    assert sampled.uncertainty["mutual_information"] <= sampled.uncertainty["predictive_entropy"]


def test_test_time_augmentation_spreads(cnn):
    prediction = classify(scans(1)[0], cnn, method="tta", uncertainty_passes=4)
    assert prediction.uncertainty["method"] == "tta" and prediction.uncertainty["passes"] == 4
    assert all(s > 0 for s in prediction.uncertainty["std"].values())


def test_left_right_is_the_axis_along_world_left():
    axial = Volume(np.zeros((4, 5, 6)), np.diag([2.0, 0.8, 0.8, 1.0]), modality="CT")
    sagittal_affine = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1.0]])
    sagittal = Volume(np.zeros((4, 5, 6)), sagittal_affine, modality="CT")
    # the model grid reads a sagittal series in world order too: left-right is its last axis
    for volume in (axial, sagittal):
        along_left = np.abs(model_grid(volume, (4, 4, 4)).affine[2, :3])
        assert int(np.argmax(along_left)) == LEFT_RIGHT_AXIS == 2


def test_mc_twin_follows_later_weight_changes():
    bundle = tiny_bundle("cnn3d")
    volume = scans(1)[0]
    classify(volume, bundle)
    dense = bundle.model.get_layer("volume_logits")
    dense.kernel.assign(np.zeros(dense.kernel.shape))
    dense.bias.assign([0.0, 9.0])
    prediction = classify(volume, bundle)
    assert prediction.uncertainty["mean"]["lesion"] == pytest.approx(
        manual_softmax(np.array([0.0, 9.0]), TEMPERATURE)[1]
    )


def test_models_without_a_clean_dropout_cut_or_without_dropout():
    keras.utils.set_random_seed(0)
    scan = keras.Input((*GRID, 1))
    features = keras.layers.Conv3D(4, 3, strides=4, name="gradcam_target")(scan)
    pooled = keras.layers.GlobalAveragePooling3D()(features)
    around = keras.layers.GlobalAveragePooling3D()(scan)  # a path around the dropout's input
    mixed = keras.layers.Concatenate()([MCDropout(0.5)(pooled), around])
    dropout_model = keras.Model(scan, {"volume": keras.layers.Dense(2)(mixed)})
    plain_model = keras.Model(scan, {"volume": keras.layers.Dense(2)(pooled)})
    volume = scans(1)[0]

    around_cut = classify(volume, Bundle(tiny_bundle().metadata, dropout_model))
    no_dropout = classify(volume, Bundle(tiny_bundle().metadata, plain_model))
    assert all(s > 0 for s in around_cut.uncertainty["std"].values())
    assert all(s == 0 for s in no_dropout.uncertainty["std"].values())
    assert "no dropout" in no_dropout.uncertainty["note"]


def test_the_device_is_named(cnn):
    prediction = classify(scans(1)[0], cnn, method="none")
    assert prediction.device == device_name()
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        assert (prediction.device == "CPU") == (not tf.config.list_logical_devices("GPU"))


def test_a_modality_mismatch_warns_but_classifies(cnn):
    ct = scans(1)[0]
    mr = Volume(ct.voxels, ct.affine, modality="MR")
    with pytest.warns(UserWarning, match="MR"):
        prediction = classify(mr, cnn, method="none")
    assert "'MR'" in prediction.modality_warning and "CT" in prediction.modality_warning
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0)
    assert classify(ct, cnn, method="none").modality_warning is None


def _with_nan() -> Volume:
    voxels = scans(1)[0].voxels.astype(np.float32)
    voxels[3, 4, 5] = np.nan
    return Volume(voxels, np.eye(4), modality="CT")


def _labels() -> Volume:
    labels = np.zeros(GRID, dtype=np.uint8)
    labels[4:10, 4:10, 4:10] = 1
    labels[15:20, 15:20, 15:20] = 3
    return Volume(labels, np.eye(4), modality="CT")


BAD_INPUTS = {
    "nan": (_with_nan, "without a value"),
    "single slice": (lambda: Volume(np.zeros((1, 32, 32)), np.eye(4), "CT"), "2D"),
    "rgb": (lambda: Volume(np.zeros((4, 32, 32, 3), np.uint8), np.eye(4), "CT"), "RGB"),
    "labels": (_labels, "label image"),
    "constant": (lambda: Volume(np.full(GRID, 40, np.int16), np.eye(4), "CT"), "same value"),
    "2d array": (lambda: np.zeros((32, 32)), "expected a scan volume"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_what_is_not_a_scan_is_refused_clearly(cnn, case):
    make, message = BAD_INPUTS[case]
    with pytest.raises(InvalidInputError, match=message):
        classify(make(), cnn)


def test_an_integer_scan_is_not_mistaken_for_labels(cnn):
    volume = scans(1)[0]
    assert volume.voxels.dtype == np.int16
    prepare_input(volume, cnn)


def test_progress_is_reported_and_cancel_stops_between_passes(cnn):
    calls = []
    classify(scans(2), cnn, uncertainty_passes=4, progress=lambda *a: calls.append(a))
    total = 2 + 1 + 4
    assert [done for done, _, _ in calls] == list(range(total + 1))
    assert {t for _, t, _ in calls} == {total} and calls[-1][2] == "done"

    stop = threading.Event()
    seen = []

    def progress(done: int, total: int, message: str) -> None:
        seen.append(message)
        if "pass 2" in message:
            stop.set()

    with pytest.raises(CancelledError):
        classify(scans(1), cnn, uncertainty_passes=10, progress=progress, cancel=stop)
    assert sum("pass" in m for m in seen) == 2
    with pytest.raises(CancelledError):
        classify(scans(1)[0], cnn, cancel=lambda: True)


def test_to_dict_is_plain_json_without_arrays_or_patient_fields(gru):
    volume = scans(2)[1]
    prediction = classify(volume, gru, box=Box((10, 0, 0), (26, 30, 30)), uncertainty_passes=3)
    data = json.loads(json.dumps(prediction.to_dict(), allow_nan=False))
    assert set(data) == {
        "model",
        "predicted_class",
        "probabilities",
        "logits",
        "per_slice",
        "uncertainty",
        "device",
        "timings",
        "modality_warning",
        "ood",
        "decision_rule",
    }
    # A bundle without a feature detector still gets the input checks, and no score.
    assert data["ood"]["score"] is None and data["ood"]["threshold"] is None
    assert data["ood"]["in_distribution"] == (data["ood"]["reasons"] == [])
    assert len(data["per_slice"]["lesion"]) == 40 and data["per_slice"]["lesion"][0] is None
    assert set(data["uncertainty"]["std"]) == set(CLASSES)
    assert {"preprocess", "predict", "uncertainty", "total"} <= set(data["timings"])
