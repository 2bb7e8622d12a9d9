"""The demo-model script runs end to end, and the shipped demo bundle is usable and better than
chance on phantoms it never saw."""

import json

import numpy as np
import pytest

from napari_scan_classifier import phantoms
from napari_scan_classifier.models import check_model, load_bundle
from napari_scan_classifier.models.bundled import bundled_model_path, load_default_bundle
from napari_scan_classifier.models.train_demo import (
    DEMO_NAME,
    main,
    phantom_data,
    sample_lesion_probability,
)
from napari_scan_classifier.training import evaluate_bundle


@pytest.mark.slow
def test_the_script_runs_end_to_end_at_tiny_size(tmp_path, capsys):
    argv = [
        "--out",
        str(tmp_path),
        "--cases",
        "16",
        "--val-cases",
        "8",
        "--test-cases",
        "8",
        "--warmup-epochs",
        "1",
        "--epochs",
        "1",
        "--input-shape",
        "16",
        "16",
        "16",
        "--phantom-shape",
        "16",
        "24",
        "24",
        "--width",
        "4",
        "--batch-size",
        "4",
    ]

    assert main(argv) == 0

    assert "held-out AUC" in capsys.readouterr().out
    folder = tmp_path / DEMO_NAME
    bundle = load_bundle(folder)
    check_model(bundle.metadata, bundle.model)
    assert bundle.metadata.classes == ["normal", "lesion"]
    assert (bundle.metadata.version, bundle.metadata.parent_version) == (2, 1)  # warm-up, tuned
    assert "not a diagnostic device" in bundle.metadata.model_card
    metrics = bundle.metadata.training["metrics"]
    assert metrics["held_out_test"]["n"] == 8
    assert {"history.png", "roc.png", "reliability.png"} <= {p.name for p in folder.iterdir()}


needs_shipped_model = pytest.mark.skipif(
    not bundled_model_path().is_dir(),
    reason="no demo model is shipped yet: training it on phantoms does not yet beat chance",
)


@needs_shipped_model
def test_the_shipped_bundle_is_small_and_valid():
    folder = bundled_model_path()
    assert sum(p.stat().st_size for p in folder.iterdir()) < 5_000_000
    bundle = load_default_bundle()
    check_model(bundle.metadata, bundle.model)
    card = json.loads((folder / "bundle.json").read_text())["model_card"]
    assert "synthetic" in card and "not a diagnostic device" in card
    assert bundle.metadata.target_spacing_mm is None  # any field of view fits the grid


@needs_shipped_model
@pytest.mark.slow
def test_the_shipped_bundle_beats_chance_on_new_phantoms():
    bundle = load_default_bundle()
    shape = bundle.metadata.input_shape
    report = evaluate_bundle(bundle, phantom_data(24, seed=31337, input_shape=shape))
    assert report.auc > 0.6
    assert sample_lesion_probability(bundle) > 0.5  # the sample CT phantom has two lesions
    assert np.isclose(
        sample_lesion_probability(bundle),
        bundle.metadata.training["sample_ct_phantom_p_lesion"],
        atol=1e-3,
    )
    assert tuple(bundle.metadata.classes) == phantoms.CLASS_NAMES
