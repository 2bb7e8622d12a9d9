"""The model is chosen by the scan: its modality and body region, from the header or the voxels,
matched against the shipped and installed models; no match is said, never guessed.

Small phantoms (24 x 64 x 64) and tiny untrained bundles saved to a temporary models folder keep
it fast: the checks are about identification and choice, not skill.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from model_fixtures import tiny_bundle

from napari_scan_classifier import datasets, phantoms
from napari_scan_classifier.choice import (
    Chooser,
    ModelEntry,
    NoMatchingModelError,
    ScanIdentity,
    choose,
    choose_model,
    identify,
    installed_models,
    model_region,
    regions_of_body_part,
)
from napari_scan_classifier.cli import main
from napari_scan_classifier.errors import InvalidBundleError
from napari_scan_classifier.io.nifti import save_nifti
from napari_scan_classifier.models import BundleMetadata, load_bundle, save_bundle
from napari_scan_classifier.models.bundle import read_metadata
from napari_scan_classifier.models.bundled import bundled_model_path
from napari_scan_classifier.outputs import MODELS_FOLDER_VARIABLE
from napari_scan_classifier.phantoms.brain import make_brain_mr_phantom
from napari_scan_classifier.samples import (
    sample_ct_path,
    sample_mr_infarct_path,
    sample_mr_path,
)
from napari_scan_classifier.training import TrainingConfig, train
from napari_scan_classifier.volume import Volume

CT_VERSION = read_metadata(bundled_model_path()).version  # the shipped CT model's

SMALL = {"shape": (24, 64, 64), "spacing": (7.0, 3.0, 3.0)}
MR_HEAD = "tiny_mr_brain"


def bare(volume: Volume) -> Volume:
    """The voxels and geometry only, as a NIfTI from elsewhere gives them (no modality)."""
    return Volume(volume.voxels, volume.affine, "OT", {})


def dicom(volume: Volume, modality: str, body_part: str | None) -> Volume:
    """As the DICOM reader gives it: the header's Modality and BodyPartExamined."""
    metadata = {"source_format": "DICOM", **({"body_part": body_part} if body_part else {})}
    return Volume(volume.voxels, volume.affine, modality, metadata)


@pytest.fixture(scope="module")
def mr() -> Volume:
    return phantoms.make_mr_phantom(1, **SMALL).volume


@pytest.fixture(scope="module")
def ct() -> Volume:
    return phantoms.make_ct_phantom(1, **SMALL).volume


def mr_bundle(name: str = MR_HEAD, region: str | None = "head", version: int = 1):
    return tiny_bundle(
        modality="MR",
        intensity={"kind": "zscore"},
        name=name,
        version=version,
        body_region=region,
    )


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed-models folder holding an MR head model (versions 1 and 2)."""
    folder = tmp_path / "installed"
    folder.mkdir()
    save_bundle(mr_bundle(version=1), folder / f"{MR_HEAD}-v1")
    save_bundle(mr_bundle(version=2), folder / f"{MR_HEAD}-v2")
    monkeypatch.setenv(MODELS_FOLDER_VARIABLE, str(folder))
    return folder


# ------------------------------------------------------------------------ what the scan is


def test_the_voxels_tell_ct_from_mr_and_a_head_from_a_trunk(mr: Volume, ct: Volume) -> None:
    head_ct = phantoms.make_head_ct_phantom(1, **SMALL).volume

    found = {name: identify(bare(v)) for name, v in [("mr", mr), ("ct", ct), ("head", head_ct)]}

    assert {n: (i.modality, i.regions) for n, i in found.items()} == {
        "mr": ("MR", ("head",)),
        "ct": ("CT", ("chest", "abdomen", "pelvis")),
        "head": ("CT", ("head",)),
    }
    assert found["mr"].describe() == "MR head"
    assert found["ct"].describe() == "CT chest/abdomen/pelvis"
    assert found["mr"].modality_source.startswith("the intensities (no negative values")
    assert "air in Hounsfield units" in found["ct"].modality_source
    assert found["mr"].region_source.endswith("deeper than wide, the shape of a head")
    assert found["ct"].region_source.endswith("wider than deep, the shape of a trunk")


@pytest.mark.parametrize("seed", [1002, 1011])  # a T1-like and a FLAIR-like acquisition
def test_mr_in_other_units_is_still_mr_of_the_head(seed: int) -> None:
    brain = make_brain_mr_phantom(seed).volume
    scaled = Volume(brain.voxels.astype(np.float32) * 3.7 + 200.0, brain.affine, "OT", {})

    assert identify(bare(brain)).describe() == "MR head"
    assert identify(scaled).describe() == "MR head"  # the background is 200 now, not 0


def test_the_region_does_not_depend_on_how_the_slices_were_acquired(mr: Volume) -> None:
    """The same head stored sagittal-first (array axes permuted, geometry kept)."""
    sagittal = Volume(mr.voxels.transpose(2, 0, 1), mr.affine[:, [2, 0, 1, 3]], "OT", {})

    assert identify(sagittal).regions == ("head",)


def test_the_header_is_believed_before_the_voxels(ct: Volume) -> None:
    found = identify(dicom(ct, "CT", "CHESTABDOMEN"))

    assert (found.modality, found.regions) == ("CT", ("chest", "abdomen"))
    assert found.how() == (
        "modality from the DICOM header (Modality CT); region from the DICOM header "
        "(BodyPartExamined CHESTABDOMEN)"
    )


def test_what_cannot_be_told_is_left_unknown(ct: Volume) -> None:
    cut = Volume(ct.voxels[:, 16:48, 8:56], ct.affine, "CT", {"source_format": "DICOM"})
    noise = np.random.default_rng(0).normal(0.0, 100.0, (16, 32, 32))

    assert identify(cut).regions == ()
    assert identify(cut).region_source == (
        "nothing: the body is cut off at the edge of the field of view"
    )
    unknown = identify(Volume(noise, np.eye(4), "OT", {}))
    assert unknown.modality is None and unknown.regions == ()
    assert unknown.describe() == "unknown modality, region unknown"
    blank = identify(Volume(np.full((4, 8, 8), np.nan), np.eye(4), "OT", {}))
    assert (blank.modality, blank.modality_source) == (
        None,
        "nothing: the voxels hold no finite value",
    )


@pytest.mark.parametrize(
    ("part", "regions"),
    [
        ("BRAIN", ("head",)),
        ("head", ("head",)),
        ("LSPINE", ("spine",)),
        ("KNEE", ("lower limb",)),
        ("ABDOMENPELVIS", ("abdomen", "pelvis")),
        ("PHANTOM", ()),
        ("", ()),
    ],
)
def test_dicom_body_parts_name_regions(part: str, regions: tuple[str, ...]) -> None:
    assert regions_of_body_part(part) == regions


# ------------------------------------------------------------------------------ the bundles


def test_body_region_is_recorded_validated_and_optional(tmp_path: Path) -> None:
    saved = save_bundle(mr_bundle(), tmp_path / "m")
    assert load_bundle(saved).metadata.body_region == "head"

    with pytest.raises(InvalidBundleError, match="body_region must be one of"):
        replace(mr_bundle().metadata, body_region="kidney")

    old = json.loads((saved / "bundle.json").read_text())
    del old["body_region"]  # a bundle saved before the field existed
    assert BundleMetadata.from_dict(old).body_region is None


def test_a_bundle_without_a_region_takes_the_one_its_training_scans_named() -> None:
    meta = mr_bundle(region=None).metadata
    trained_on = replace(meta, applicability={"checks": {"body_parts": ["BRAIN", "HEAD"]}})
    mixed = replace(meta, applicability={"checks": {"body_parts": ["HEAD", "PELVIS"]}})

    assert model_region(trained_on) == "head"
    assert model_region(mixed) is None and model_region(meta) is None


@pytest.mark.slow
def test_a_model_trained_from_scratch_records_the_region_its_scans_name() -> None:
    scans = [
        (
            phantoms.make_mr_phantom(seed, (12, 24, 24), (12.0, 8.0, 8.0), lesions=label).volume,
            label,
        )
        for seed in range(6)
        for label in (0, 1)
    ]
    data = datasets.from_volumes(
        [(volume, ("normal", "lesion")[label]) for volume, label in scans],
        (8, 16, 16),
        None,
        {"kind": "zscore"},
        class_names=("normal", "lesion"),
    )
    config = TrainingConfig(
        architecture="cnn3d",
        modality="MR",
        input_shape=(8, 16, 16),
        width=4,
        batch_size=4,
        epochs=1,
        augment=False,
        validation_fraction=0.34,
    )

    result = train(data, config)

    assert {s["body_part"] for s in data.summaries} == {"HEAD"}
    assert result.bundle.metadata.body_region == "head"


def test_the_shipped_ct_model_records_its_region_and_its_files_still_match() -> None:
    meta = read_metadata(bundled_model_path())

    assert (meta.modality, meta.body_region) == ("CT", "abdomen")
    assert load_bundle(bundled_model_path()).metadata.files == meta.files  # hashes checked


def test_installed_models_are_the_latest_version_of_each_name(models: Path) -> None:
    (models / "not-a-model").mkdir()
    (models / "not-a-model" / "bundle.json").write_text("{")

    found = {(m.name, m.version, m.modality, m.region, m.shipped) for m in installed_models()}

    shipped = read_metadata(bundled_model_path()).version
    assert ("demo_ct_lesion", shipped, "CT", "abdomen", True) in found
    assert {entry for entry in found if not entry[4]} == {(MR_HEAD, 2, "MR", "head", False)}


# ------------------------------------------------------------------------------- the choice


def test_each_scan_chooses_the_model_of_its_modality_and_region(
    models: Path, mr: Volume, ct: Volume
) -> None:
    by_mr = choose_model(bare(mr))
    by_ct = choose_model(dicom(ct, "CT", "ABDOMEN"))
    by_nifti_ct = choose_model(bare(ct))

    assert (by_mr.model.name, by_mr.model.version) == (MR_HEAD, 2)  # the user's, the latest
    assert by_mr.reason.startswith(f"MR head: {MR_HEAD}")
    assert by_ct.reason == "CT abdomen: demo_ct_lesion"
    assert by_nifti_ct.reason == "CT chest/abdomen/pelvis: demo_ct_lesion, a model of the abdomen"
    assert "; modality from the intensities (no negative values" in by_mr.explanation()
    assert Path(by_mr.model.location) == models / f"{MR_HEAD}-v2"
    assert Chooser().bundle(by_mr.require()).metadata.version == 2


def test_no_model_for_the_scan_is_said_not_guessed(models: Path, mr: Volume) -> None:
    pelvis = dicom(mr, "MR", "PELVIS")

    choice = choose_model(pelvis)

    assert choice.model is None
    assert choice.reason.startswith(
        "no installed model covers MR pelvis: install or train one (installed: demo_ct_lesion "
        f"v{CT_VERSION} for CT abdomen, "
    )
    assert choice.reason.endswith(f", {MR_HEAD} v2 for MR head)")
    with pytest.raises(NoMatchingModelError, match="no installed model covers MR pelvis"):
        choice.require()
    pet = choose_model(dicom(mr, "PT", "HEAD"))
    assert pet.reason == "no installed model covers PT scans: models are made for CT or MR"
    assert pet.identity.how() == (
        "modality from the DICOM header (Modality PT); region from the DICOM header "
        "(BodyPartExamined HEAD)"
    )
    unknown = ScanIdentity("MR", (), "the DICOM header (Modality MR)", "nothing: x")
    assert choose(unknown, installed_models()).reason == (
        "could not tell the body region of this MR scan: choose a model"
    )


def test_a_users_model_is_preferred_to_a_shipped_one(tmp_path: Path) -> None:
    shipped = ModelEntry("demo", 5, "CT", "abdomen", "demo", True, "2026-01-01T00:00:00+00:00")
    own = ModelEntry("mine", 1, "CT", "abdomen", str(tmp_path), False, "2025-01-01T00:00:00+00:00")
    scan = ScanIdentity("CT", ("abdomen",), "a", "b")

    assert choose(scan, [shipped, own]).reason == "CT abdomen: mine (also matching: demo)"


# ---------------------------------------------------------------------------- command line


def test_classify_says_when_no_installed_model_covers_the_scan(
    tmp_path: Path, ct: Volume, capsys: pytest.CaptureFixture[str]
) -> None:
    """An MR of the trunk (the CT phantom's anatomy in non-negative units): only the shipped
    models are installed (the tests' empty models folder), none for that."""
    scan = save_nifti(Volume(ct.voxels + 1024, ct.affine, "MR", {}), tmp_path / "q7.nii.gz")
    out = tmp_path / "results.json"

    code = main(["classify", str(scan), "--out", str(out), "--passes", "0"])

    captured = capsys.readouterr()
    assert code == 2
    assert (
        "warning: 001 MR: no installed model covers MR chest/abdomen/pelvis: install or train "
        f"one (installed: demo_ct_lesion v{CT_VERSION} for CT abdomen"
    ) in captured.err
    assert (
        "modality from the NIfTI header (MR); region from the body outline (153 mm wide, 99 mm "
        "front to back): wider than deep, the shape of a trunk\n"
    ) in captured.err
    assert "error: no scan could be classified" in captured.err
    (row,) = json.loads(out.read_text())["series"]
    assert row["status"] == "no_model" and "predicted_class" not in row
    assert row["model_choice"]["model"] is None
    assert row["model_choice"]["regions"] == ["chest", "abdomen", "pelvis"]


def test_classify_runs_each_scan_with_its_own_model_unless_one_is_given(
    models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "auto" / "results.csv"
    out.parent.mkdir()
    scans = [str(sample_mr_path()), str(sample_ct_path())]

    code = main(["classify", *scans, "--out", str(out), "--passes", "0"])

    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"001 MR: MR head: {MR_HEAD}" in captured.err  # the user's model before a shipped one
    assert "(modality from the NIfTI header (MR); region from the body outline (" in captured.err
    assert "]: CT abdomen: demo_ct_lesion (modality from the DICOM header (Modality CT)" in (
        captured.err
    )
    mr_row, ct_row = csv.DictReader(out.read_text().splitlines())
    assert (mr_row["model"], mr_row["model_version"]) == (MR_HEAD, "2")
    assert (ct_row["model"], ct_row["model_choice"]) == (
        "demo_ct_lesion",
        "CT abdomen: demo_ct_lesion",
    )
    assert ct_row["predicted_class"] == "lesion" and ct_row["status"] == "classified"
    summary = json.loads((tmp_path / "auto" / "results.jsonl").read_text().splitlines()[0])
    assert summary["model_choice"]["reason"].startswith(f"MR head: {MR_HEAD}")

    given = tmp_path / "given.json"
    code = main(["classify", scans[0], "--model", "demo_ct_lesion", "--out", str(given)])

    assert code == 0
    report = json.loads(given.read_text())
    (row,) = report["series"]
    assert report["model"]["name"] == "demo_ct_lesion" and "model_choice" not in row
    assert row["status"] == "out_of_distribution"
    assert "the scan is MR but the model was trained on CT scans" in row["ood"]["reasons"]


@pytest.mark.slow
def test_the_sample_mrs_choose_the_shipped_brain_model_and_the_sample_ct_the_ct_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No --model, nothing installed: the shipped models only."""
    scans = [sample_mr_path(), sample_mr_infarct_path(), sample_ct_path()]
    out = tmp_path / "results.json"

    code = main(["classify", *map(str, scans), "--out", str(out), "--passes", "0"])

    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = json.loads(out.read_text())["series"]
    assert [(row["model"]["name"], row["model_choice"]["reason"]) for row in rows] == [
        ("demo_mr_brain", "MR head: demo_mr_brain"),
        ("demo_mr_brain", "MR head: demo_mr_brain"),
        ("demo_ct_lesion", "CT abdomen: demo_ct_lesion"),
    ]
    assert "002 MR: MR head: demo_mr_brain (modality from the NIfTI header (MR); region " in (
        captured.err
    )
