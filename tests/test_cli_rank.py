"""The rank command: the core's ranking, printed for a person or as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from model_fixtures import sphere_case, spread_bundle

from napari_scan_classifier.active_learning import MEASURES, rank_by_uncertainty
from napari_scan_classifier.cli import main
from napari_scan_classifier.cli.rank import MEASURES as CLI_MEASURES
from napari_scan_classifier.io.nifti import save_nifti
from napari_scan_classifier.models import save_bundle
from napari_scan_classifier.phantoms import make_ct_phantom, make_head_ct_phantom
from napari_scan_classifier.samples import sample_ct_path


@pytest.fixture(scope="module")
def scans_and_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("rank")
    folder = root / "scans"
    folder.mkdir()
    for i in range(5):
        volume, _ = sphere_case(20 + i, i % 2, (24, 28, 28))
        save_nifti(volume, folder / f"scan_{i}.nii.gz")
    return folder, save_bundle(spread_bundle(), root / "model")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["rank", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("measure", ["entropy", "margin"])
def test_the_json_ranking_is_the_core_ranking(scans_and_model, capsys, measure) -> None:
    folder, model = scans_and_model
    core = rank_by_uncertainty([folder], spread_bundle(), measure=measure, passes=3)

    code, out, _ = run(
        capsys, str(folder), "--model", str(model), "--measure", measure, "--passes", "3", "--json"
    )

    assert code == 0
    ranked = json.loads(out)["ranked"]
    assert [r["scan"] for r in ranked] == [r.name for r in core]
    assert [r["rank"] for r in ranked] == [1, 2, 3, 4, 5]
    assert [r["score"] for r in ranked] == pytest.approx([r.score for r in core], rel=1e-5)
    assert all(r["measure"] == measure for r in ranked)
    assert str(folder) not in out  # scans are named by their place, never by their path


def test_the_table_lists_each_scan_most_uncertain_first(scans_and_model, capsys) -> None:
    folder, model = scans_and_model
    core = rank_by_uncertainty([folder], spread_bundle(), passes=3)

    code, out, _ = run(capsys, str(folder), "--model", str(model), "--passes", "3")

    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["rank", "model", "score", "predicted", "scan"]
    first = core[0]
    p = first.probabilities[first.predicted_class]
    assert lines[1].split()[:5] == [
        "1",
        *first.model.split(),
        f"{first.score:.3f}",
        first.predicted_class,
    ]
    assert f"({p:.2f})" in lines[1] and lines[1].endswith(first.name)
    assert [line.split()[0] for line in lines[1:6]] == ["1", "2", "3", "4", "5"]
    assert all(line.startswith("out of distribution: input 1, NIfTI file") for line in lines[6:])


def test_auto_ranks_each_scan_with_its_model_and_lists_the_uncovered_apart(
    tmp_path, capsys
) -> None:
    head = save_nifti(make_head_ct_phantom(0).volume, tmp_path / "head.nii.gz")
    body = save_nifti(make_ct_phantom(1).volume, tmp_path / "body.nii.gz")

    code, out, _ = run(capsys, str(sample_ct_path()), str(head), str(body), "--passes", "1")

    assert code == 0
    rows = [line.split() for line in out.splitlines()[1:3]]
    assert [row[:2] for row in rows] == [["1", "demo_ct_lesion"], ["2", "demo_ct_lesion"]]
    assert out.splitlines()[-1].startswith("not ranked: input 2") and "CT head" in out


def test_the_measures_offered_are_the_core_measures() -> None:
    assert CLI_MEASURES == MEASURES
