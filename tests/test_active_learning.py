"""rank_by_uncertainty: most informative first, on volumes and on files, by each measure."""

from __future__ import annotations

import threading
from pathlib import Path

import keras
import numpy as np
import pytest
from dicom_helpers import file_positions
from model_fixtures import (
    CLASSES,
    GRID,
    RANKING_MR_CLASSES,
    metadata,
    save_ranking_models,
    sphere_case,
    spread_bundle,
    spread_logits,
    tiny_bundle,
)
from scipy.special import entr

from napari_scan_classifier.active_learning import (
    MEASURES,
    Unranked,
    load_ranked,
    rank_by_chosen_model,
    rank_by_uncertainty,
    uncertainty_score,
)
from napari_scan_classifier.choice import Chooser, installed_models
from napari_scan_classifier.errors import CancelledError
from napari_scan_classifier.inference import classify
from napari_scan_classifier.io.dicom_write import write_series
from napari_scan_classifier.io.nifti import save_nifti
from napari_scan_classifier.models import Bundle, build_cnn3d, load_bundle
from napari_scan_classifier.phantoms import (
    make_ct_phantom,
    make_head_ct_phantom,
    make_mr_phantom,
)
from napari_scan_classifier.volume import Volume

SHAPES = [(20, 40, 36), (40, 30, 30), (32, 32, 32), (24, 28, 28), (30, 36, 30)]


@pytest.fixture(scope="module")
def mc_bundle() -> Bundle:
    return spread_logits(tiny_bundle())


@pytest.fixture(scope="module")
def fixed_bundle() -> Bundle:
    """Dropout rate 0: every pass is the same, so two rankings can be compared exactly."""
    return spread_bundle()


def scans(n: int = 5) -> list[Volume]:
    return [sphere_case(20 + i, i % 2, SHAPES[i % len(SHAPES)])[0] for i in range(n)]


@pytest.mark.parametrize("measure", MEASURES)
def test_ranking_is_ordered_by_the_measure(mc_bundle, measure):
    volumes = scans()

    ranking = rank_by_uncertainty(volumes, mc_bundle, measure=measure, passes=8)

    assert [r.rank for r in ranking] == [1, 2, 3, 4, 5]
    assert sorted(r.item for r in ranking) == [0, 1, 2, 3, 4]
    scores = [r.score for r in ranking]
    assert scores == sorted(scores, reverse=True)
    assert len(set(scores)) == len(scores)  # the spread model tells the scans apart
    for r in ranking:
        assert r.measure == measure
        assert r.score == pytest.approx(uncertainty_score(r.uncertainty, measure))
        assert r.uncertainty["passes"] == 8
        assert r.path is None and r.name == volumes[r.item].display_name()


def test_scores_are_the_uncertainties_inference_reports(fixed_bundle):
    volumes = scans()
    predictions = classify(volumes, fixed_bundle, uncertainty_passes=3)
    entropies = [p.uncertainty["predictive_entropy"] for p in predictions]

    ranking = rank_by_uncertainty(volumes, fixed_bundle, passes=3)

    assert [r.item for r in ranking] == list(np.argsort(entropies)[::-1])
    for r in ranking:
        mean = np.array(list(predictions[r.item].uncertainty["mean"].values()))
        assert r.score == pytest.approx(float(entr(mean).sum()), rel=1e-5)
        assert r.probabilities == pytest.approx(predictions[r.item].probabilities, rel=1e-5)


def test_measures_of_one_prediction():
    uncertainty = {
        "mean": {"a": 0.7, "b": 0.2, "c": 0.1},
        "predictive_entropy": 0.8,
        "mutual_information": 0.05,
    }
    assert uncertainty_score(uncertainty, "margin") == pytest.approx(0.5)
    assert uncertainty_score(uncertainty, "entropy") == 0.8
    assert uncertainty_score(uncertainty, "mutual_information") == 0.05
    with pytest.raises(ValueError, match="measure"):
        uncertainty_score(uncertainty, "variance")


THREE = ["normal", "tumour", "infarct"]


def _three_class_uncertainty(mean: list[float]) -> dict:
    return {
        "mean": dict(zip(THREE, mean, strict=True)),
        "predictive_entropy": float(entr(np.array(mean)).sum()),
        "mutual_information": 0.0,
    }


def test_three_class_entropy_and_margin_rank_differently():
    """With three classes, entropy counts every class and margin only the top two: a scan torn
    between two classes comes first by margin, one spread over all three by entropy."""
    confident = _three_class_uncertainty([0.90, 0.05, 0.05])
    two_way = _three_class_uncertainty([0.45, 0.45, 0.10])
    spread = _three_class_uncertainty([0.50, 0.30, 0.20])

    entropy = [uncertainty_score(u, "entropy") for u in (confident, two_way, spread)]
    margin = [uncertainty_score(u, "margin") for u in (confident, two_way, spread)]

    assert entropy == pytest.approx([0.3944, 0.9489, 1.0297], abs=1e-4)
    assert margin == pytest.approx([0.15, 1.0, 0.8])
    assert entropy[2] > entropy[1] and margin[1] > margin[2]


@pytest.mark.parametrize("measure", ["entropy", "margin"])
def test_a_three_class_model_ranks_by_its_three_probabilities(measure):
    keras.utils.set_random_seed(0)
    model = build_cnn3d((*GRID, 1), 3, width=4, dropout=0.0)
    bundle = spread_logits(Bundle(metadata(classes=THREE), model))
    volumes = scans()

    ranking = rank_by_uncertainty(volumes, bundle, measure=measure, passes=1)

    for r in ranking:
        mean = np.array([r.uncertainty["mean"][name] for name in THREE])
        top, second = np.sort(mean)[::-1][:2]
        expected = float(entr(mean).sum()) if measure == "entropy" else 1 - (top - second)
        assert r.score == pytest.approx(expected, rel=1e-5)
        assert list(r.probabilities) == THREE
        assert r.predicted_class == THREE[int(np.argmax(list(r.probabilities.values())))]
    scores = [r.score for r in ranking]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 5


PATIENT = "DOE^JOHN_1234"


def test_files_in_a_folder_rank_like_the_same_volumes(fixed_bundle, tmp_path: Path):
    volumes = scans(4)
    folder = tmp_path / PATIENT  # folders are often named after patients
    folder.mkdir()
    for i, volume in enumerate(volumes):
        save_nifti(volume, folder / f"{PATIENT}_scan{i}.nii.gz")
    (folder / "notes.txt").write_text("not a scan")
    (folder / ".DS_Store").write_bytes(b"\0")
    skipped: list[str] = []

    from_files = rank_by_uncertainty([folder], fixed_bundle, passes=2, on_skip=skipped.append)
    from_memory = rank_by_uncertainty(volumes, fixed_bundle, passes=2)

    assert [r.name.split(": ")[0] for r in from_files] == [  # place in the folder, not name
        f"input 1, NIfTI file {r.item + 1}" for r in from_memory
    ]
    assert [r.score for r in from_files] == pytest.approx([r.score for r in from_memory], rel=1e-4)
    assert {r.item for r in from_files} == {0}  # all came from the one folder given
    (note,) = skipped  # notes.txt: said once, for the folder
    assert note == (  # the NIfTI files are not DICOM candidates
        "input 1: no DICOM images found in this folder "
        "(1 file checked; 1 skipped: not a DICOM file)"
    )
    assert PATIENT not in note + repr(from_files) + str(from_files)
    first = load_ranked(from_files[0])
    np.testing.assert_array_equal(first.voxels, volumes[from_memory[0].item].voxels)


def test_a_dicom_series_is_named_by_input_and_series_key(fixed_bundle, tmp_path: Path):
    folder = tmp_path / PATIENT
    volume = make_ct_phantom(0, shape=(12, 24, 24), spacing=(5.0, 4.0, 4.0)).volume
    write_series(volume, folder, series_number=3, series_description="Chest CT")
    junk = folder / f"{PATIENT}.dcm"
    junk.write_text("not an image")
    skipped: list[str] = []

    (ranked,) = rank_by_uncertainty([folder], fixed_bundle, passes=1, on_skip=skipped.append)

    key = load_ranked(ranked).metadata["series_key"]
    assert ranked.name == f"input 1, series {key}: CT #3 Chest CT"
    assert skipped == [f"input 1: file {file_positions(folder)[junk]}: not a DICOM file"]
    assert PATIENT not in repr(ranked) + str(ranked) + "".join(skipped)


def test_unusable_scans_are_skipped_with_the_reason(fixed_bundle, tmp_path: Path):
    labels = Volume(np.random.default_rng(0).integers(0, 3, (16, 16, 16)), np.eye(4))
    skipped: list[str] = []

    ranking = rank_by_uncertainty(
        [scans(1)[0], labels, tmp_path / f"{PATIENT}.nii.gz"],
        fixed_bundle,
        passes=1,
        on_skip=skipped.append,
    )

    assert [r.item for r in ranking] == [0]
    assert len(skipped) == 2
    assert sum("label image" in s for s in skipped) == 1
    assert "input 3: no such file or folder" in skipped  # by place, never by name


def test_cancel_stops_the_ranking(fixed_bundle):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(CancelledError):
        rank_by_uncertainty(scans(2), fixed_bundle, cancel=cancel)


def test_bad_settings_are_refused(fixed_bundle):
    with pytest.raises(ValueError, match="measure"):
        rank_by_uncertainty(scans(1), fixed_bundle, measure="variance")
    with pytest.raises(ValueError, match="passes"):
        rank_by_uncertainty(scans(1), fixed_bundle, passes=0)


def test_out_of_distribution_scans_are_ranked_apart_after_the_others(fixed_bundle):
    """Anatomy-like CT phantoms pass the input checks; an MR given to this CT model does not,
    and goes last whatever its uncertainty."""
    cts = [make_ct_phantom(seed, (20, 32, 32), (6.0, 5.0, 5.0)).volume for seed in range(3)]
    mr = make_mr_phantom(1, (20, 32, 32), (6.0, 5.0, 5.0)).volume

    ranking = rank_by_uncertainty([mr, *cts], fixed_bundle, passes=1)

    assert [r.item for r in ranking][-1] == 0 and [r.rank for r in ranking] == [1, 2, 3, 4]
    assert [r.in_distribution for r in ranking] == [True, True, True, False]
    scores = [r.score for r in ranking[:3]]
    assert scores == sorted(scores, reverse=True)
    assert "the scan is MR but the model was trained on CT scans" in ranking[-1].ood_reasons


SMALL = {"shape": (24, 64, 64), "spacing": (7.0, 3.0, 3.0)}  # a trunk or head choice.py tells


def test_each_scan_is_ranked_by_the_model_its_modality_and_region_choose(tmp_path: Path):
    paths = save_ranking_models(tmp_path)
    chooser = Chooser([m for m in installed_models(tmp_path) if not m.shipped])
    cts = [make_ct_phantom(seed, **SMALL).volume for seed in range(2)]
    mrs = [make_mr_phantom(seed, **SMALL).volume for seed in range(2)]
    head_ct = make_head_ct_phantom(1, **SMALL).volume
    volumes = [mrs[0], cts[0], head_ct, mrs[1], cts[1]]

    ranking = rank_by_chosen_model(volumes, chooser, measure="margin", passes=2)

    by_ct = rank_by_uncertainty(cts, load_bundle(paths["CT"]), measure="margin", passes=2)
    by_mr = rank_by_uncertainty(mrs, load_bundle(paths["MR"]), measure="margin", passes=2)
    ct_items, mr_items = [1, 4], [0, 3]  # where each model's scans are in ``volumes``
    assert [(r.model, r.item, r.rank) for r in ranking.ranked] == [
        *[("tiny_ct_trunk v1", ct_items[r.item], r.rank) for r in by_ct],  # models by name
        *[("tiny_mr_head v1", mr_items[r.item], r.rank) for r in by_mr],
    ]
    assert [r.score for r in ranking.ranked] == pytest.approx(
        [r.score for r in by_ct + by_mr], rel=1e-5
    )
    assert [r.probabilities for r in ranking.ranked] == [
        pytest.approx(r.probabilities, rel=1e-5) for r in by_ct + by_mr
    ]
    assert [list(r.probabilities) for r in ranking.ranked] == [CLASSES] * 2 + [
        RANKING_MR_CLASSES
    ] * 2
    assert {r.choice for r in ranking.ranked} == {
        "CT abdomen: tiny_ct_trunk",
        "MR head: tiny_mr_head",
    }
    (uncovered,) = ranking.uncovered  # the head CT: listed apart, not given the nearest model
    assert isinstance(uncovered, Unranked) and uncovered.item == 2
    assert uncovered.name == head_ct.display_name()
    assert uncovered.reason == (
        "no installed model covers CT head: install or train one (installed: "
        "tiny_ct_trunk v1 for CT abdomen, tiny_mr_head v1 for MR head)"
    )
    assert uncovered.how == (
        "modality from the scan's modality field; region from the header (BodyPartExamined HEAD)"
    )


def test_scans_in_a_folder_choose_their_models_and_the_uncovered_can_be_opened(tmp_path: Path):
    save_ranking_models(tmp_path / "models")
    chooser = Chooser([m for m in installed_models(tmp_path / "models") if not m.shipped])
    folder = tmp_path / PATIENT
    folder.mkdir()
    volumes = [make_mr_phantom(0, **SMALL).volume, make_head_ct_phantom(1, **SMALL).volume]
    for i, volume in enumerate(volumes):
        save_nifti(volume, folder / f"{PATIENT}_scan{i}.nii.gz")
    skipped: list[str] = []

    ranking = rank_by_chosen_model([folder], chooser, passes=1, on_skip=skipped.append)

    (ranked,) = ranking.ranked
    (uncovered,) = ranking.uncovered
    assert (ranked.model, ranked.name) == ("tiny_mr_head v1", "input 1, NIfTI file 1: MR")
    assert uncovered.name == "input 1, NIfTI file 2: CT"
    assert uncovered.reason.startswith("no installed model covers CT head")
    assert skipped == [] and PATIENT not in repr(ranking) + str(ranking)
    np.testing.assert_array_equal(load_ranked(uncovered).voxels, volumes[1].voxels)


def test_a_given_model_names_itself_in_the_ranking(fixed_bundle):
    ranking = rank_by_uncertainty(scans(2), fixed_bundle, passes=1)

    assert [(r.model, r.choice) for r in ranking] == [("sphere-test v1", "")] * 2
