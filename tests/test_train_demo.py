"""The demo-model script runs end to end, and the shipped demo bundle is usable, better than
chance on phantoms it never saw, and its Grad-CAM points at the sample CT's lesions."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_scan_classifier.models import check_model, load_bundle
from napari_scan_classifier.models.bundled import bundled_model_path, load_default_bundle
from napari_scan_classifier.models.train_demo import (
    DEMO_NAME,
    PHANTOM_SHAPES,
    clear_cases,
    main,
    on_grid,
    sample_lesion_probability,
    sample_saliency_contrast,
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
        "--localise-epochs",
        "1",
        "--small-lesion-epochs",
        "1",
        "--subtle-lesion-epochs",
        "1",
        "--fine-grid-epochs",
        "1",
        "--epochs",
        "1",
        "--input-shape",
        "16",
        "16",
        "16",
        "--coarse-input-shape",
        "12",
        "12",
        "12",
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
    assert (bundle.metadata.version, bundle.metadata.parent_version) == (2, 1)
    assert bundle.metadata.architecture == "cnn3d_mil"
    stages = bundle.metadata.training["stages"]
    assert [stage["name"] for stage in stages] == [
        "localise",
        "small-lesions",
        "subtle-lesions",
        "fine-grid",
        "scan-labels",
    ]
    kept = {
        name: load_bundle(tmp_path / "stages" / name) for name in ("subtle-lesions", "fine-grid")
    }
    assert kept["subtle-lesions"].metadata.input_shape == (12, 12, 12)  # the coarse grid
    assert kept["fine-grid"].metadata.input_shape == bundle.metadata.input_shape == (16, 16, 16)
    assert stages[0]["data"].endswith("2 of them fresh each epoch (10 in all)")
    assert "(in turn by pair)" in stages[1]["data"]
    assert {p.name for p in (tmp_path / "stages").iterdir()} == {
        "localise",
        "small-lesions",
        "subtle-lesions",
        "fine-grid",
    }
    assert "not a diagnostic device" in bundle.metadata.model_card
    metrics = bundle.metadata.training["metrics"]
    assert metrics["held_out_clear"]["n"] == metrics["held_out_make_cases"]["n"] == 8
    clear = metrics["held_out_clear"]
    assert list(clear["per_class"]) == ["normal", "lesion"]
    assert np.sum(clear["confusion_matrix"], axis=1).tolist() == [
        clear["per_class"][name]["n"] for name in ("normal", "lesion")
    ]
    assert {"history.png", "roc.png", "reliability.png"} <= {p.name for p in folder.iterdir()}

    with pytest.raises(FileExistsError, match=DEMO_NAME):  # never replaced
        main(argv)
    shutil.rmtree(folder)
    assert main(argv) == 0  # resumes after the stages on lesion masks kept in stages/
    printed = capsys.readouterr().out
    assert not any(
        f"{name}:" in printed for name in ("localise", "small-lesions", "subtle", "fine")
    )
    assert "scan-labels:" in printed
    resumed = load_bundle(folder).metadata.training["stages"]
    assert resumed[:4] == stages[:4]


def test_the_shipped_bundle_is_small_and_valid():
    folder = bundled_model_path()
    assert sum(p.stat().st_size for p in folder.iterdir()) < 5_000_000
    bundle = load_default_bundle()
    check_model(bundle.metadata, bundle.model)
    card = json.loads((folder / "bundle.json").read_text())["model_card"]
    assert "synthetic" in card and "not a diagnostic device" in card
    assert bundle.metadata.target_spacing_mm is None  # any field of view fits the grid
    assert bundle.metadata.gradcam_layer == bundle.metadata.saliency["best_gradcam_layer"]


README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_quotes_the_shipped_bundle():
    """The README's figures for the demo model are bundle.json's, so they cannot drift."""
    readme = README.read_text(encoding="utf-8")
    m = json.loads((bundled_model_path() / "bundle.json").read_text())
    metrics = m["training"]["metrics"]
    tests = (("clear lesions", "held_out_clear"), ("subtle lesions", "held_out_make_cases"))
    for label, key in tests:
        figures = metrics[key]
        row = re.search(rf"^\| {figures['n']} phantoms, {label}[^|]*\|(.*)\|$", readme, re.M)
        assert row is not None, label
        quoted = [float(cell) for cell in row.group(1).split("|")]
        keys = ("auc", "accuracy", "sensitivity", "specificity")
        assert quoted == [round(figures[k], 3) for k in keys]
    assert f"Version {m['version']} is shipped" in readme
    assert f"P(lesion) = {m['training']['sample_ct_phantom_p_lesion']:.2f}" in readme


@pytest.mark.slow
def test_the_shipped_bundle_beats_chance_on_new_phantoms():
    bundle = load_default_bundle()
    new = on_grid(clear_cases(40, 777_000, PHANTOM_SHAPES), bundle.metadata.input_shape, "")
    report = evaluate_bundle(bundle, new)

    assert report.auc > 0.7
    assert report.accuracy > 0.6  # calibrated: the 0.5 threshold means something
    probability = sample_lesion_probability(bundle)
    assert probability > 0.5  # the sample CT phantom has two lesions
    assert probability == pytest.approx(
        bundle.metadata.training["sample_ct_phantom_p_lesion"], abs=1e-3
    )
    inside, outside = sample_saliency_contrast(bundle)
    assert inside > 1.5 * outside  # Grad-CAM points at the lesions
