"""Training and fine-tuning: splits, imbalance, augmentation, early stopping, calibration, new
classes, cancelling, errors, and the data-parallel path (tiny models and phantoms throughout)."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import keras
import numpy as np
import pytest

from napari_scan_classifier import datasets, phantoms, training
from napari_scan_classifier.cases import CaseLibrary
from napari_scan_classifier.datasets import LabelledData, Split
from napari_scan_classifier.errors import CancelledError, TrainingError
from napari_scan_classifier.models import (
    Bundle,
    BundleMetadata,
    build_cnn3d,
    check_model,
    load_bundle,
    save_bundle,
)
from napari_scan_classifier.training import TrainingConfig, augment, train
from napari_scan_classifier.volume import Volume

GRID = (16, 16, 16)
CT_WINDOW = {"kind": "ct_window", "center": 40.0, "width": 400.0}
FAST = {"input_shape": GRID, "width": 4, "batch_size": 4, "augment": False}


def phantom_cases(labels, seed=0, lesion_hu=250.0):
    """Small CT phantoms on GRID; a 'lesion' case gets an obvious ball (a test must learn fast).

    Consecutive cases share their anatomy, like the pairs of ``phantoms.make_case``, so a network
    cannot tell the classes apart by memorising bodies.
    """
    rng = np.random.default_rng(seed)
    pairs = []
    for i, label in enumerate(labels):
        phantom = phantoms.make_ct_phantom(
            seed * 1000 + i // 2, shape=(16, 20, 20), spacing=(10.0, 12.0, 12.0), lesions=0
        )
        hu = phantom.volume.voxels.astype(np.float32)
        if label != "normal":
            body = np.argwhere(hu > -200)
            centre = body[rng.integers(len(body))]
            zz, yy, xx = np.ogrid[: hu.shape[0], : hu.shape[1], : hu.shape[2]]
            ball = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= 12
            hu[ball] += lesion_hu if label == "lesion" else -lesion_hu
        pairs.append((Volume(hu, phantom.volume.affine, "CT"), label))
    names = tuple(dict.fromkeys(["normal", "lesion", *labels]))
    return datasets.from_volumes(pairs, GRID, None, CT_WINDOW, class_names=names)


def untrained_bundle(classes=("normal", "lesion"), seed=0) -> Bundle:
    keras.utils.set_random_seed(seed)
    metadata = BundleMetadata(
        name="tiny",
        version=1,
        classes=list(classes),
        modality="CT",
        task="volume",
        input_shape=GRID,
        target_spacing_mm=None,
        intensity=CT_WINDOW,
        architecture="cnn3d",
    )
    return Bundle(metadata, build_cnn3d((*GRID, 1), len(classes), width=4))


def folder_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def data() -> LabelledData:
    return phantom_cases(["normal", "lesion"] * 40, seed=1)


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory, data):
    """An untrained base saved to disk, then fine-tuned into a folder of versions."""
    root = tmp_path_factory.mktemp("fine_tune")
    base = load_bundle(save_bundle(untrained_bundle(), root / "tiny-v1"))
    before = folder_hashes(root / "tiny-v1")
    config = TrainingConfig(**{**FAST, "batch_size": 8}, epochs=6, learning_rate=3e-3, patience=3)
    result = train(data, config, base=base, out=root)
    return result, base, root, before


@pytest.mark.slow
def test_fine_tuning_raises_validation_auc_over_the_base(fine_tuned):
    result, _base, root, before = fine_tuned

    assert result.base_report is not None
    assert result.base_report.n == result.report.n == 16
    assert result.report.auc >= 0.8
    assert result.report.auc >= result.base_report.auc + 0.2
    metadata = result.bundle.metadata
    assert (metadata.version, metadata.parent_version) == (2, 1)
    assert metadata.training["metrics"]["validation_base_model"]["auc"] == pytest.approx(
        result.base_report.auc
    )
    assert folder_hashes(root / "tiny-v1") == before  # the base is never modified
    comparison = result.comparison
    # 8 cases a class cannot tell AUC 0.48 -> 0.86 from chance: interval -0.03 to 0.73
    assert comparison.verdict == "not distinguishable"
    assert comparison.ci95[0] < 0 < comparison.difference < comparison.ci95[1]
    assert comparison.auc_base == pytest.approx(result.base_report.auc)
    assert comparison.auc_new == pytest.approx(result.report.auc)
    recorded = metadata.training["comparison_with_base"]
    assert (recorded["verdict"], recorded["base_version"], recorded["cases"]) == (
        "not distinguishable",
        1,
        16,
    )
    assert result.warnings == (
        "Too few validation cases to tell (normal: 8, lesion: 8; at least 10 per class are "
        "needed): the model was saved, but its validation figures, its calibration and its "
        "comparison with the base model may be chance. Add cases before relying on it.",
    )
    assert metadata.training["warnings"] == list(result.warnings)


@pytest.mark.slow
def test_the_new_version_is_saved_whole_with_its_plots(fine_tuned):
    result, _base, root, _before = fine_tuned

    assert result.bundle.path == root / "tiny-v2"
    names = {p.name for p in (root / "tiny-v2").iterdir()}
    assert {"model.keras", "bundle.json", "history.png", "roc.png", "confusion.png"} <= names
    assert {"reliability.png", "reliability_uncalibrated.png"} <= names
    loaded = load_bundle(root / "tiny-v2")
    check_model(loaded.metadata, loaded.model)
    info = json.loads((root / "tiny-v2" / "bundle.json").read_text())["training"]
    assert info["class_counts"]["validation"] == {"normal": 8, "lesion": 8}
    assert len(info["history"]["val_auc"]) == info["epochs_run"]
    assert 1 <= info["best_epoch"] <= info["epochs_run"]
    assert sorted(p.name for p in root.iterdir()) == ["tiny-v1", "tiny-v2"]  # no leftovers


@pytest.mark.slow
def test_calibration_is_recorded_with_its_decision_rule(fine_tuned):
    result = fine_tuned[0]
    metadata = result.bundle.metadata

    assert 0.05 <= metadata.temperature <= 20 and len(metadata.class_bias) == 2
    assert sum(metadata.class_bias) == pytest.approx(0.0, abs=1e-9)
    assert metadata.decision_rule["kind"] == "argmax"
    assert "normal 0.50, lesion 0.50" in metadata.decision_rule["description"]
    assert metadata.calibration["fitted_on"] == {
        "cases": 16,
        "per_class": {"normal": 8, "lesion": 8},
    }
    assert metadata.calibration["reliable"] is False
    assert any(note.startswith("Calibration was fitted on 16") for note in result.notes)
    assert result.report.auc == pytest.approx(result.uncalibrated.auc)  # a binary bias keeps it
    validation = metadata.training["metrics"]["validation"]
    assert validation["majority_rate"] == 0.5
    assert validation["accuracy"] == pytest.approx(result.report.accuracy)


def test_cancel_stops_within_one_batch_and_writes_nothing(tmp_path, data):
    base_path = save_bundle(untrained_bundle(), tmp_path / "tiny-v1")
    before = folder_hashes(base_path)
    cancel = threading.Event()
    after_cancel = []

    def progress(event):
        if cancel.is_set() and event.kind == "batch":
            after_cancel.append(event)
        if event.kind == "batch" and event.batch == 3:
            cancel.set()

    config = TrainingConfig(**FAST, epochs=3)
    with pytest.raises(CancelledError, match="nothing was saved"):
        train(
            data,
            config,
            base=load_bundle(base_path),
            out=tmp_path,
            progress=progress,
            cancel=cancel,
        )

    assert len(after_cancel) <= 1  # the batch in which it was set, at most
    assert folder_hashes(base_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-v1"]


def test_cancel_accepts_a_function_and_stops_before_loading_ends(tmp_path):
    library = tmp_path / "cases"
    cases = CaseLibrary(library)
    for case in phantoms.make_cases(4, seed=2, shape=(12, 16, 16)):
        cases.add(case.volume, case.class_name)
    with pytest.raises(CancelledError):
        train(library, TrainingConfig(**FAST), cancel=lambda: True, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_batchnorm_statistics_are_those_of_the_training_cases():
    keras.utils.set_random_seed(3)
    model = build_cnn3d((*GRID, 1), 2, width=4)
    x = np.random.default_rng(3).normal(5.0, 2.0, (12, *GRID)).astype(np.float32)
    norm = model.get_layer("stem_bn")
    norm.momentum = 0.9

    training.refresh_batchnorm(model, x, batch_size=4)

    stem = keras.Model(model.input, model.get_layer("stem_conv").output)
    activations = keras.ops.convert_to_numpy(stem(x[..., None]))
    expected = activations.mean(axis=(0, 1, 2, 3))  # equal batches: the mean of batch means
    np.testing.assert_allclose(keras.ops.convert_to_numpy(norm.moving_mean), expected, rtol=1e-4)
    assert norm.momentum == 0.9  # restored for later training


def test_class_weights_balance_an_imbalanced_set():
    y = np.array([0] * 30 + [1] * 10)
    weights = training.fit.balanced_weights(y, "class_weight")
    assert weights == pytest.approx({0: 40 / (2 * 30), 1: 40 / (2 * 10)})
    assert training.fit.balanced_weights(y, "none") == {}

    cases = Split(np.zeros((40, 8, 8, 8), np.float32), y, np.tile((0, 2), (40, 1)))
    epochs = training.fit.Epochs(cases, TrainingConfig(batch_size=8, augment=False))
    _x, labels, sample_weights = epochs.arrays(0, lambda: False)
    assert sample_weights.tolist() == pytest.approx([weights[int(c)] for c in labels])


def test_balanced_sampling_draws_classes_equally():
    y = np.array([0] * 90 + [1] * 10)
    cases = Split(np.zeros((100, 8, 8, 8), np.float32), y, np.tile((0, 2), (100, 1)))
    config = TrainingConfig(batch_size=10, imbalance="balanced_sampling", augment=False)
    epochs = training.fit.Epochs(cases, config)
    drawn = np.concatenate([epochs.arrays(epoch, lambda: False)[1] for epoch in range(5)])
    assert 0.4 < drawn.mean() < 0.6
    assert set(epochs.arrays(0, lambda: False)[2].tolist()) == {1.0}  # no class weights on top
    assert epochs.arrays(0, lambda: True) is None  # cancelled while augmenting


def test_stratified_split_keeps_both_classes():
    data = phantom_cases(["normal"] * 40 + ["lesion"] * 10)
    classes = ("normal", "lesion")
    train_cases, val_cases, how = training.data.split_cases(data, classes, TrainingConfig(seed=3))

    assert val_cases.counts(classes) == {"normal": 8, "lesion": 2}
    assert train_cases.counts(classes) == {"normal": 32, "lesion": 8}
    assert "stratified" in how


def test_one_class_only_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(TrainingError, match=r"one class only .*'normal' \(6 cases\)"):
        train(phantom_cases(["normal"] * 6), TrainingConfig(**FAST), out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_too_few_cases_to_validate_are_refused(tmp_path):
    data = phantom_cases(["normal"] * 10 + ["lesion"] * 3)
    with pytest.raises(TrainingError, match=r"Too few cases .*'lesion': 3"):
        train(data, TrainingConfig(**FAST), out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_data_on_another_grid_is_refused():
    with pytest.raises(TrainingError, match="grid"):
        train(
            phantom_cases(["normal", "lesion"] * 4),
            TrainingConfig(**{**FAST, "input_shape": (8, 8, 8)}),
        )


def test_new_class_gets_a_new_head_and_keeps_the_encoder():
    base = untrained_bundle()
    copy = training.model.copy_with_classes(base.model, 2, 3)

    assert copy.output["volume"].shape[-1] == 3
    for layer in base.model.layers:
        new = copy.get_layer(layer.name).get_weights()
        for old_value, new_value in zip(layer.get_weights(), new, strict=True):
            if layer.name == "volume_logits":
                np.testing.assert_array_equal(new_value[..., :2], old_value)
            else:
                np.testing.assert_array_equal(new_value, old_value)


def test_fine_tuning_with_a_new_class_extends_the_classes():
    data = phantom_cases(["normal", "lesion", "cyst"] * 6, seed=4)
    config = TrainingConfig(**FAST, epochs=1, validation_fraction=0.34, allow_new_classes=True)

    result = train(data, config, base=untrained_bundle())

    assert result.bundle.metadata.classes == ["normal", "lesion", "cyst"]
    assert result.bundle.model.output["volume"].shape[-1] == 3
    assert any("'cyst' (6 cases)" in note for note in result.notes)
    assert result.base_report is None
    check_model(result.bundle.metadata, result.bundle.model)


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["slice_gru", "slice_unet_gru"])
def test_slice_networks_train_from_scratch(tmp_path, architecture):
    config = TrainingConfig(**{**FAST, "architecture": architecture}, epochs=1, name="gru demo")
    result = train(phantom_cases(["normal", "lesion"] * 8), config, out=tmp_path)

    assert result.bundle.path == tmp_path / "gru_demo-v1"
    assert set(result.bundle.model.output) == {"volume", "slices"}
    assert result.bundle.metadata.parent_version is None


@pytest.mark.parametrize("axes", [(0, 2), (1, 0)])
def test_augmentation_flips_left_right_only(axes):
    volume = np.random.default_rng(0).random((6, 7, 8)).astype(np.float32)
    outcomes = set()
    for seed in range(12):
        out = augment(volume, axes, np.random.default_rng(seed), strength=0.0)
        if np.array_equal(out, volume):
            outcomes.add("same")
        else:
            np.testing.assert_allclose(out, np.flip(volume, axis=axes[1]), atol=1e-6)
            outcomes.add("flipped")
    assert outcomes == {"same", "flipped"}


def test_augmentation_rotates_about_the_superior_inferior_axis():
    volume = np.zeros((9, 21, 21), np.float32)
    volume[:, 8:13, 8:13] = 1.0  # a column along z: a rotation about z keeps it a column
    out = augment(volume, (0, 2), np.random.default_rng(1), strength=1.0)
    assert out.shape == volume.shape and out.dtype == np.float32
    profile = out[:, 10, 10]
    assert np.ptp(profile) < 0.5 * (profile.mean() - out[:, 0, 0].mean())


@pytest.mark.slow
def test_data_parallel_training_on_two_logical_cpus(tmp_path):
    script = textwrap.dedent(
        """
        import json, sys
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
        sys.path.insert(0, sys.argv[1])
        from test_training import FAST, phantom_cases
        from napari_scan_classifier.training import TrainingConfig, train
        devices = tuple(d.name for d in tf.config.list_logical_devices("CPU"))
        config = TrainingConfig(**FAST, epochs=1, devices=devices)
        result = train(phantom_cases(["normal", "lesion"] * 8), config)
        print(json.dumps({"devices": result.bundle.metadata.training["devices"],
                          "loss": result.history["loss"]}))
        """
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(
        [sys.executable, "-c", script, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(report["devices"]) == 2
    assert all(d.endswith(("CPU:0", "CPU:1")) for d in report["devices"])
    assert np.isfinite(report["loss"]).all()


def test_one_visible_device_trains_without_a_strategy():
    with training.data_parallel() as devices:
        assert devices == ()


def test_progress_messages_read_well():
    event = training.TrainingEvent("epoch", 2, 5, 10, 10, 0.5, 0.4, 0.9, 2)
    assert event.message == "epoch 2/5 loss 0.5000 val_loss 0.4000 val_auc 0.900 (best epoch 2)"
    assert training.TrainingEvent("load", 0, 0, 3, 9).message == "loading cases 3/9"


@pytest.mark.slow
def test_three_imbalanced_classes_train_calibrate_and_report_per_class(tmp_path):
    """normal : lesion (a bright ball) : cyst (a dark one) = 3 : 2 : 1, class-weighted."""
    labels = ["normal", "normal", "normal", "lesion", "lesion", "cyst"] * 14
    config = TrainingConfig(
        **{**FAST, "batch_size": 8}, epochs=6, learning_rate=3e-3, patience=3, seed=2
    )

    result = train(phantom_cases(labels, seed=6), config, out=tmp_path)

    m = result.bundle.metadata
    classes = ["normal", "lesion", "cyst"]
    assert m.classes == classes and len(m.class_bias) == 3
    assert m.calibration["prior"] == pytest.approx(
        {"normal": 0.5, "lesion": 1 / 3, "cyst": 1 / 6}, abs=0.02
    )
    validation = m.training["metrics"]["validation"]
    report = result.report
    assert report.confusion.shape == (3, 3) and report.confusion.sum() == validation["n"]
    assert validation["confusion_matrix"] == report.confusion.tolist()
    assert validation["per_class_auc"] == pytest.approx(
        {name: report.per_class[name].auc for name in classes}
    )
    assert validation["auc"] == pytest.approx(np.mean(list(validation["per_class_auc"].values())))
    assert report.accuracy >= validation["majority_rate"]
    assert {"roc.png", "confusion.png", "reliability.png"} <= {
        p.name for p in result.bundle.path.iterdir()
    }
