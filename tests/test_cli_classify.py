"""``napari-scan-classifier classify`` and ``demo --headless``: what they write, and how they fail.

A tiny untrained model is enough: the checks are about plumbing (every series found, results equal
to the core's, maps on the scan's own grid, nothing identifying written), not about skill.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest
from model_fixtures import CLASSES, GRID, metadata, tiny_bundle

from napari_scan_classifier.cli import main
from napari_scan_classifier.inference import classify
from napari_scan_classifier.io import load_scans
from napari_scan_classifier.io.dicom_write import write_series
from napari_scan_classifier.io.nifti import load_nifti, save_nifti
from napari_scan_classifier.models import Bundle, build_cnn3d, load_bundle, save_bundle
from napari_scan_classifier.models.bundled import load_default_bundle
from napari_scan_classifier.phantoms import make_ct_phantom
from napari_scan_classifier.results.text import summary_lines
from napari_scan_classifier.saliency import integrated_gradients, measure_faithfulness
from napari_scan_classifier.saliency.faithfulness import FAITHFUL_MARGIN
from napari_scan_classifier.samples import sample_ct_path
from napari_scan_classifier.volume import Volume

PATIENT = "DOE^JANE"
SERIES = {"Abdomen 5mm": 3, "Abdomen soft": 4}  # description -> series number


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_bundle(tiny_bundle(), tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def dicom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two CT series of one study in one folder tree, a patient name in every header, and a file
    that is not DICOM at all."""
    root = tmp_path_factory.mktemp("patient_DOE_JANE")
    for seed, (description, number) in enumerate(SERIES.items()):
        volume = make_ct_phantom(seed, shape=(20, 40, 40), spacing=(5.0, 4.0, 4.0)).volume
        write_series(
            volume,
            root / f"series{number}",
            series_description=description,
            series_number=number,
            patient_name=PATIENT,
        )
    (root / "notes.txt").write_text("not a scan")
    return root


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_json_rows_equal_the_core_and_maps_keep_the_scan_geometry(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, dicom_dir: Path, bundle_dir: Path
) -> None:
    out, maps = tmp_path / "results.json", tmp_path / "maps"

    code, stdout, stderr = _run(
        capsys, "classify", dicom_dir, "--model", bundle_dir, "--out", out, "--saliency-dir", maps
    )

    assert code == 0, stderr
    report = json.loads(out.read_text())
    rows = report["series"]
    assert sorted(row["series_number"] for row in rows) == sorted(SERIES.values())
    assert [row["index"] for row in rows] == [1, 2]
    assert report["model"]["classes"] == CLASSES
    assert [s["input"] for s in report["skipped_files"]] == [1]
    bundle = load_bundle(bundle_dir)
    volumes = {v.metadata["series_key"]: v for v in load_scans(dicom_dir).volumes}
    for row in rows:
        volume = volumes[row["series_key"]]
        assert row["status"] == "classified"
        assert row["series"].startswith(f"{row['index']:03d} CT #{row['series_number']}")
        assert row["description"] == volume.description
        assert sum(row["probabilities"].values()) == pytest.approx(1.0)
        assert row["predicted_class"] in CLASSES
        assert set(row["uncertainty"]["std"]) == set(CLASSES)
        assert row["uncertainty"]["passes"] == 10
        assert row["device"]
        expected = classify(volume, bundle, method="none").probabilities
        for name in CLASSES:
            assert row["probabilities"][name] == pytest.approx(expected[name], abs=1e-5)
        saved = load_nifti(maps / row["saliency"]["file"])
        assert saved.shape == volume.shape
        np.testing.assert_allclose(saved.affine, volume.affine, atol=1e-4)
        assert float(saved.voxels.min()) >= 0.0 and float(saved.voxels.max()) == pytest.approx(1.0)
    assert f"wrote {out}" in stdout
    assert "skipped a file of input 1: " in stderr and "notes.txt" not in stderr + out.read_text()


def test_nothing_identifying_is_written(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, dicom_dir: Path, bundle_dir: Path
) -> None:
    out = tmp_path / "results.json"

    code, stdout, stderr = _run(capsys, "classify", dicom_dir, "--model", bundle_dir, "--out", out)

    assert code == 0, stderr
    written = out.read_text() + stdout + stderr
    for secret in ("DOE", "JANE", str(dicom_dir), dicom_dir.name):
        assert secret not in written
    assert all(row["saliency"] is None for row in json.loads(out.read_text())["series"])


def test_csv_has_a_row_per_series_and_per_skipped_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, dicom_dir: Path, bundle_dir: Path
) -> None:
    out = tmp_path / "results.csv"

    code, _, stderr = _run(
        capsys, "classify", dicom_dir, "--model", bundle_dir, "--out", out, "--passes", "0"
    )

    assert code == 0, stderr
    with out.open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    classified = [row for row in rows if row["status"] == "classified"]
    assert len(classified) == len(SERIES)
    for row in classified:
        assert sum(float(row[f"p_{name}"]) for name in CLASSES) == pytest.approx(1.0, abs=1e-5)
        assert row["predicted_class"] in CLASSES
        assert row["uncertainty_passes"] == "0"
        assert float(row[f"sd_{CLASSES[0]}"]) == 0.0
    (skipped,) = [row for row in rows if row["status"] == "skipped"]
    assert skipped["input"] == "1" and skipped["note"]


def test_unusable_series_fails_alone(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, dicom_dir: Path, bundle_dir: Path
) -> None:
    """A scan the model cannot take (here a NIfTI of one slice) gets its reason; the other
    inputs of the run are still classified."""
    from napari_scan_classifier.io.nifti import save_nifti

    volume = make_ct_phantom(0, shape=(8, 16, 16)).volume
    broken = save_nifti(
        Volume(volume.voxels[:1], volume.affine, modality="CT"), tmp_path / "broken.nii.gz"
    )
    out = tmp_path / "results.json"

    code, _, stderr = _run(
        capsys, "classify", broken, dicom_dir, "--model", bundle_dir, "--out", out
    )

    assert code == 0
    rows = json.loads(out.read_text())["series"]
    assert [row["status"] for row in rows] == ["failed", "classified", "classified"]
    assert "is a single 2D image, not 3D" in rows[0]["error"]
    assert "is a single 2D image, not 3D" in stderr


def test_faithfulness_gives_a_pass_or_fail_equal_to_the_core(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, dicom_dir: Path, bundle_dir: Path
) -> None:
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    options = ("--model", bundle_dir, "--faithfulness", "--passes", "0")
    for out in (out_json, out_csv):
        code, _, stderr = _run(capsys, "classify", dicom_dir, *options, "--out", out)
        assert code == 0, stderr

    rows = json.loads(out_json.read_text())["series"]
    with out_csv.open(newline="") as stream:
        flat = {row["series_key"]: row for row in csv.DictReader(stream) if row["series_key"]}
    bundle = load_bundle(bundle_dir)
    volumes = {v.metadata["series_key"]: v for v in load_scans(dicom_dir).volumes}
    for row in rows:
        saliency = row["saliency"]
        assert saliency["method"] == "integrated_gradients"  # no record in the bundle: fallback
        volume = volumes[row["series_key"]]
        expected = measure_faithfulness(
            volume, bundle, integrated_gradients(volume, bundle, row["predicted_class"])
        )
        check = saliency["faithfulness"]
        assert check["passed"] is expected.passed
        assert check["auc_deletion"] == pytest.approx(expected.auc_deletion, abs=1e-5)
        assert check["auc_insertion"] == pytest.approx(expected.auc_insertion, abs=1e-5)
        assert check["rule"] == "insertion AUC - deletion AUC >= 0.1"
        csv_row = flat[row["series_key"]]
        assert csv_row["saliency_faithfulness_passed"] == str(expected.passed).lower()
        assert float(csv_row["saliency_insertion_auc"]) == pytest.approx(
            expected.auc_insertion, abs=1e-5
        )


@pytest.mark.slow
def test_the_shipped_model_passes_its_check_on_the_sample_ct(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out, out_csv = tmp_path / "sample.json", tmp_path / "sample.csv"
    for path in (out, out_csv):
        options = ("--faithfulness", "--passes", "0", "--out", path)
        code, _, stderr = _run(capsys, "classify", sample_ct_path(), *options)
        assert code == 0, stderr
    (row,) = json.loads(out.read_text())["series"]
    with out_csv.open(newline="") as stream:
        (csv_row,) = (r for r in csv.DictReader(stream) if r["series_key"])
    assert row["predicted_class"] == "lesion"
    # the bundle's default, integrated gradients, passes here itself: nothing replaced
    assert (row["saliency"]["method"], row["saliency"]["instead_of"]) == (
        "integrated_gradients",
        [],
    )
    assert (
        csv_row["saliency_method"] == "integrated_gradients" and not csv_row["saliency_instead_of"]
    )
    assert row["saliency"]["faithfulness"]["passed"] is True
    assert row["saliency"]["faithfulness"]["gap"] > FAITHFUL_MARGIN + 0.05  # 0.26


@pytest.mark.slow
def test_a_default_map_that_fails_is_replaced_and_named_in_every_output(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The shipped model with Grad-CAM on its second block as the recorded default (that map
    failed on every validation phantom, and fails on the sample CT): integrated gradients,
    measured as passing on the validation cases, is shown, and JSON, CSV and text name the
    default that failed."""
    bundle = load_default_bundle()
    record = {**bundle.metadata.saliency, "method": "gradcam", "layer": "block2_relu"}
    bundle.metadata = replace(bundle.metadata, saliency=record)
    model = save_bundle(bundle, tmp_path / "model")
    out, out_csv = tmp_path / "sample.json", tmp_path / "sample.csv"
    for path in (out, out_csv):
        options = ("--model", model, "--faithfulness", "--passes", "0", "--out", path)
        code, _, stderr = _run(capsys, "classify", sample_ct_path(), *options)
        assert code == 0, stderr

    (row,) = json.loads(out.read_text())["series"]
    with out_csv.open(newline="") as stream:
        (csv_row,) = (r for r in csv.DictReader(stream) if r["series_key"])
    (failed,) = row["saliency"]["instead_of"]
    assert (failed["method"], failed["layer"]) == ("grad_cam", "block2_relu")
    assert failed["gap"] < FAITHFUL_MARGIN
    assert row["saliency"]["method"] == "integrated_gradients"
    assert row["saliency"]["faithfulness"]["passed"] is True
    assert csv_row["saliency_method"] == "integrated_gradients"
    assert csv_row["saliency_instead_of"] == f"grad_cam block2_relu (gap {failed['gap']:.3g})"
    assert (
        "  shown instead of the model's default (Grad-CAM), whose map failed its check on this "
        f"scan (gap {failed['gap']:.3f})"
    ) in summary_lines(row)


def _assert_one_clean_line(code: int, stdout: str, stderr: str, *words: str) -> None:
    assert code != 0
    assert stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and "Traceback" not in stderr
    for word in words:
        assert word in lines[0]


def test_missing_path_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, bundle_dir: Path
) -> None:
    out = tmp_path / "results.json"
    code, stdout, stderr = _run(
        capsys, "classify", tmp_path / "no_such_scan", "--model", bundle_dir, "--out", out
    )
    _assert_one_clean_line(code, stdout, stderr, "input 1: no such file or folder")
    assert not out.exists()


def test_invalid_bundle_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, dicom_dir: Path
) -> None:
    broken = tmp_path / "broken_model"
    broken.mkdir()
    (broken / "bundle.json").write_text("{not json")
    code, stdout, stderr = _run(
        capsys, "classify", dicom_dir, "--model", broken, "--out", tmp_path / "r.json"
    )
    _assert_one_clean_line(code, stdout, stderr, "broken_model")


def test_unknown_output_format_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, dicom_dir: Path, bundle_dir: Path
) -> None:
    code, stdout, stderr = _run(
        capsys, "classify", dicom_dir, "--model", bundle_dir, "--out", tmp_path / "r.xlsx"
    )
    _assert_one_clean_line(code, stdout, stderr, "r.xlsx", ".json or .csv")


def test_headless_demo_prints_the_result(
    capsys: pytest.CaptureFixture[str], bundle_dir: Path
) -> None:
    code, stdout, stderr = _run(capsys, "demo", "--headless", "--model", bundle_dir)

    assert code == 0, stderr
    assert "CT #1 Synthetic CT phantom: (72, 128, 128) voxels" in stdout
    lines = [line.split() for line in stdout.splitlines()]
    (predicted,) = [words[1] for words in lines if words[0] == "Predicted:"]
    assert predicted in CLASSES
    shown = {words[0]: words[1:] for words in lines if words[0] in CLASSES}  # p ± sd
    assert list(shown) == CLASSES
    assert all(rest[1] == "±" for rest in shown.values())
    assert sum(float(rest[0]) for rest in shown.values()) == pytest.approx(1.0, abs=0.011)
    assert "Model: sphere-test v1 on " in stdout
    assert "Time: " in stdout
    # an untrained network: its p(class) does not depend on any region
    assert "Saliency check FAILED: p(" in stdout and "no region carries this decision" in stdout


def test_headless_demo_uses_the_model_the_sample_chooses(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, stdout, stderr = _run(capsys, "demo", "--headless")

    assert code == 0, stderr
    assert (
        "  Chosen by the scan: CT abdomen: demo_ct_lesion (modality from the DICOM header "
        "(Modality CT); region from the DICOM header (BodyPartExamined ABDOMEN))\n"
    ) in stdout
    assert "Predicted: lesion" in stdout  # the sample CT phantom has two lesions
    assert f"Model: demo_ct_lesion v{load_default_bundle().metadata.version} on " in stdout
    assert "OUT OF DISTRIBUTION" not in stdout
    assert "Saliency: Integrated gradients of 'lesion'" in stdout
    assert "shown instead of" not in stdout  # the default passes here
    assert "Saliency check passed: removing the regions the map marks" in stdout


def test_classify_lets_the_sample_ct_choose_the_shipped_ct_model(tmp_path: Path, capsys) -> None:
    out = tmp_path / "results.json"
    code, _, stderr = _run(capsys, "classify", str(sample_ct_path()), "--out", str(out))

    assert code == 0, stderr
    report = json.loads(out.read_text())
    assert report["model"]["name"] == "demo_ct_lesion"
    assert report["model"]["chosen_by"] == "the scan"
    (row,) = report["series"]
    assert row["model_choice"]["reason"] == "CT abdomen: demo_ct_lesion"
    assert "]: CT abdomen: demo_ct_lesion (modality from the DICOM header" in stderr
    assert row["status"] == "classified" and row["ood"]["in_distribution"]
    assert row["ood"]["score"] < row["ood"]["threshold"] and row["ood"]["reasons"] == []
    assert row["predicted_class"] == "lesion"
    assert row["probabilities"]["lesion"] > 0.5


THREE = ["normal", "tumour", "infarct"]


@pytest.fixture(scope="module")
def three_class_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained three-class model: the checks are about which class is explained."""
    keras.utils.set_random_seed(0)
    model = build_cnn3d((*GRID, 1), 3, width=4, dropout=0.0)
    bundle = Bundle(metadata(classes=THREE), model)
    return save_bundle(bundle, tmp_path_factory.mktemp("model") / "three")


def test_saliency_class_explains_that_class_in_every_series(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, three_class_dir: Path
) -> None:
    volumes = [make_ct_phantom(seed, shape=(20, 40, 40)).volume for seed in (1, 2)]
    scans = [save_nifti(v, tmp_path / f"scan{n}.nii.gz") for n, v in enumerate(volumes, start=1)]
    bundle = load_bundle(three_class_dir)
    options = ("--model", three_class_dir, "--passes", "0", "--method", "integrated_gradients")
    out, maps = tmp_path / "r.json", tmp_path / "maps"

    code, _, stderr = _run(
        capsys,
        "classify",
        *scans,
        *options,
        "--saliency-class",
        "infarct",
        "--saliency-dir",
        maps,
        "--out",
        out,
    )

    assert code == 0, stderr
    rows = json.loads(out.read_text())["series"]
    assert len(rows) == 2
    for row, volume in zip(rows, volumes, strict=True):
        assert row["saliency"]["target_class"] == "infarct"
        assert row["saliency"]["file"].endswith("_integrated_gradients_infarct.nii.gz")
        saved = load_nifti(maps / row["saliency"]["file"]).voxels
        infarct = integrated_gradients(volume, bundle, "infarct").values
        normal = integrated_gradients(volume, bundle, "normal").values
        np.testing.assert_allclose(saved, infarct, atol=1e-4)
        assert np.abs(infarct - normal).max() > 0.1  # another class has another map

    code, stdout, stderr = _run(
        capsys,
        "classify",
        *scans,
        *options,
        "--saliency-class",
        "stroke",
        "--out",
        tmp_path / "x.json",
    )
    _assert_one_clean_line(
        code,
        stdout,
        stderr,
        "The class to explain, 'stroke', is not one of the model's classes ('normal', 'tumour', "
        "'infarct')",
    )
    assert not (tmp_path / "x.json").exists()
