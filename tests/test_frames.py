"""4D scans (time points, echoes, b-values) classified one volume at a time: ``Volume.frame``,
``classify --frame`` and the results that say which frame answered."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from model_fixtures import tiny_bundle

from napari_scan_classifier.cli import main
from napari_scan_classifier.errors import InvalidInputError
from napari_scan_classifier.inference import classify
from napari_scan_classifier.io.nifti import load_nifti, save_nifti
from napari_scan_classifier.models import load_bundle, save_bundle
from napari_scan_classifier.phantoms import make_ct_phantom
from napari_scan_classifier.results import at_frame, classify_paths
from napari_scan_classifier.results.text import summary_lines
from napari_scan_classifier.volume import Volume

OFFSETS_HU = (0.0, 400.0, -300.0)  # each frame its own intensities, so answers differ


def four_d_ct(seed: int = 0) -> Volume:
    """Three frames of one small CT, each shifted by its own offset."""
    volume = make_ct_phantom(seed, shape=(20, 40, 40), spacing=(5.0, 4.0, 4.0)).volume
    frames = np.stack([volume.voxels.astype(np.float32) + offset for offset in OFFSETS_HU])
    return Volume(frames, volume.affine, "CT", {"series_description": "Perfusion"})


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_bundle(tiny_bundle(), tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def four_d_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_nifti(four_d_ct(), tmp_path_factory.mktemp("scans") / "perfusion.nii.gz")


def test_a_frame_is_that_volume_on_the_same_geometry() -> None:
    scan = four_d_ct()

    second = scan.frame(1)

    assert scan.frames == 3 and second.frames == 1
    np.testing.assert_array_equal(second.voxels, scan.voxels[1])
    np.testing.assert_array_equal(second.affine, scan.affine)
    assert second.spacing == pytest.approx((5.0, 4.0, 4.0))
    assert (second.metadata["frame"], second.metadata["frames"]) == (1, 3)
    assert second.display_name() == "CT Perfusion frame 1"
    for index in (-1, 3):
        with pytest.raises(InvalidInputError, match=rf"no frame {index}: .* has 3 \(0 to 2\)"):
            scan.frame(index)
    with pytest.raises(InvalidInputError, match="the scan has 1"):
        second.frame(0)


def test_at_frame_leaves_3d_scans_and_missing_frames_as_they_are() -> None:
    scan = four_d_ct()
    plain = scan.frame(0)

    assert at_frame(plain, 2) is plain
    assert at_frame(scan, None) is scan
    assert at_frame(scan, 5) is scan
    assert at_frame(scan, 2).metadata["frame"] == 2


def test_a_4d_scan_is_refused_with_its_frames_and_how_to_pick_one() -> None:
    with pytest.raises(InvalidInputError, match=r"got 3 volumes .* pick one, 0 to 2 \(classify"):
        classify(four_d_ct(), tiny_bundle(), method="none")


def test_each_frame_gets_its_own_answer_and_the_result_says_which() -> None:
    scan, bundle = four_d_ct(), tiny_bundle()

    answers = [classify(scan.frame(i), bundle, method="none") for i in range(scan.frames)]

    probabilities = np.array([list(a.probabilities.values()) for a in answers])
    assert not np.allclose(probabilities[0], probabilities[1], atol=1e-4)
    result = {**answers[1].to_dict(), "saliency": None, "frame": 1, "frames": 3}
    assert "Frame: 1 of a 4D scan (0 to 2)" in summary_lines(result)


def _classify(tmp_path: Path, name: str, scan: Path, model: Path, *options: str) -> int:
    return main(
        ["classify", str(scan), "--model", str(model), "--out", str(tmp_path / name), *options]
    )


def test_cli_classifies_the_frame_asked_for_as_the_core_does(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, four_d_file: Path, bundle_dir: Path
) -> None:
    refused = _classify(tmp_path, "plain.json", four_d_file, bundle_dir)
    picked = _classify(tmp_path, "frame2.json", four_d_file, bundle_dir, "--frame", "2")

    assert refused != 0 and picked == 0
    assert "pick one, 0 to 2" in capsys.readouterr().err
    (failed,) = json.loads((tmp_path / "plain.json").read_text())["series"]
    assert failed["status"] == "failed" and "got 3 volumes" in failed["error"]
    (row,) = json.loads((tmp_path / "frame2.json").read_text())["series"]
    expected = classify(load_nifti(four_d_file).frame(2), load_bundle(bundle_dir), method="none")
    assert row["status"] != "failed" and (row["frame"], row["frames"]) == (2, 3)
    assert row["series"].endswith("frame 2") and row["shape"] == [20, 40, 40]
    for name, p in expected.probabilities.items():
        assert row["probabilities"][name] == pytest.approx(p, abs=1e-5)


def test_resuming_with_another_frame_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, four_d_file: Path, bundle_dir: Path
) -> None:
    assert _classify(tmp_path, "results.csv", four_d_file, bundle_dir, "--frame", "1") == 0
    capsys.readouterr()

    code = _classify(tmp_path, "results.csv", four_d_file, bundle_dir, "--frame", "0")

    assert code != 0
    assert "holds results made with --frame 1; choose another --out" in capsys.readouterr().err
    assert _classify(tmp_path, "results.csv", four_d_file, bundle_dir, "--frame", "1") == 0


def test_classify_paths_takes_the_frame_as_the_cohort_does(
    four_d_file: Path, bundle_dir: Path
) -> None:
    report = classify_paths([four_d_file], bundle_dir, passes=0, frame=1)

    (row,) = report.series
    expected = classify(load_nifti(four_d_file).frame(1), load_bundle(bundle_dir), method="none")
    assert (row["frame"], row["frames"]) == (1, 3) and row["series"].endswith("frame 1")
    for name, p in expected.probabilities.items():
        assert row["probabilities"][name] == pytest.approx(p, abs=1e-5)
