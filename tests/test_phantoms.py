"""The phantom generator: reproducible, realistic values, true anatomy, geometry and labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from napari_scan_classifier.io import load_scans
from napari_scan_classifier.phantoms import (
    CLASS_NAMES,
    LESION,
    Phantom,
    make_case,
    make_cases,
    make_ct_phantom,
    make_head_ct_phantom,
    make_mr_phantom,
    sample_ct_phantom,
    sample_mr_infarct_phantom,
    sample_mr_phantom,
    write_sample_data,
)
from napari_scan_classifier.volume import Volume, spacing_of

SMALL = (40, 80, 80)  # 200 x 192 x 192 mm at SMALL_SPACING: the whole torso, quickly
SMALL_SPACING = (5.0, 2.4, 2.4)


def small_ct(seed: int, **options) -> Phantom:
    return make_ct_phantom(seed, shape=SMALL, spacing=SMALL_SPACING, **options)


def centroid_world(phantom: Phantom, tissue: str) -> np.ndarray:
    """World (I, P, L) mm of a tissue's centre of mass."""
    index = np.array(ndimage.center_of_mass(phantom.tissue_mask(tissue)))
    return phantom.volume.index_to_world(index)[0]


# ------------------------------------------------------------------------------ determinism


@pytest.mark.parametrize("make", [small_ct, make_mr_phantom])
def test_same_seed_gives_the_same_phantom_and_another_seed_a_different_one(make):
    first, again, other = make(11), make(11), make(12)
    np.testing.assert_array_equal(first.volume.voxels, again.volume.voxels)
    np.testing.assert_array_equal(first.lesion_mask, again.lesion_mask)
    np.testing.assert_array_equal(first.volume.affine, again.volume.affine)
    assert first.volume.metadata == again.volume.metadata
    assert np.mean(first.volume.voxels != other.volume.voxels) > 0.3


def test_make_cases_is_reproducible_and_balanced():
    shape = (24, 48, 48)
    cases = list(make_cases(6, seed=5, shape=shape))
    again = list(make_cases(6, seed=5, shape=shape))
    assert [c.label for c in cases] == [c.label for c in again]
    assert sum(c.label for c in cases) == 3
    for case, twin in zip(cases, again, strict=True):
        np.testing.assert_array_equal(case.volume.voxels, twin.volume.voxels)
    assert len({c.volume.voxels.tobytes() for c in cases}) == 6  # every case differs


def test_make_cases_honours_the_positive_fraction_and_rejects_nonsense():
    labels = [c.label for c in make_cases(5, seed=1, positive_fraction=0.2, shape=(24, 48, 48))]
    assert sorted(labels) == [0, 0, 0, 0, 1]
    with pytest.raises(ValueError, match="positive_fraction"):
        next(make_cases(2, positive_fraction=1.5))
    with pytest.raises(ValueError, match="label"):
        make_case(0, 2)
    with pytest.raises(ValueError, match="modality"):
        make_case(0, 1, modality="PET")


# ---------------------------------------------------------------------------- intensities


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ct_tissues_have_realistic_hounsfield_units(seed):
    phantom = small_ct(seed)
    voxels = phantom.volume.voxels
    assert phantom.volume.modality == "CT"
    assert voxels.dtype == np.int16

    def median(tissue: str) -> float:
        return float(np.median(voxels[phantom.tissue_mask(tissue)]))

    assert median("air") == pytest.approx(-1000, abs=15)
    assert -130 <= median("fat") <= -70
    assert -900 <= median("lung") <= -800
    assert 20 <= median("soft_tissue") <= 80
    assert 45 <= median("liver") <= 75
    assert 15 <= median("kidney") <= 45
    assert median("cortical_bone") > 600
    assert median("cancellous_bone") > 300
    assert voxels.min() >= -1024


def test_ct_noise_level_is_what_was_asked():
    quiet, noisy = small_ct(3, noise_hu=10.0), small_ct(3, noise_hu=25.0)
    # Inside the air far from the body, the spread is pure noise.
    corner = (slice(None), slice(0, 6), slice(0, 6))
    assert np.std(quiet.volume.voxels[corner]) == pytest.approx(10.0, rel=0.25)
    assert np.std(noisy.volume.voxels[corner]) == pytest.approx(25.0, rel=0.25)


def test_mr_tissues_are_t1_like():
    phantom = make_mr_phantom(4)
    voxels = phantom.volume.voxels

    def median(tissue: str) -> float:
        return float(np.median(voxels[phantom.tissue_mask(tissue)]))

    assert phantom.volume.modality == "MR"
    assert voxels.min() >= 0 and voxels.max() < 1200
    assert median("background") < 60
    assert median("csf") < median("grey_matter") < median("white_matter") < median("scalp")
    assert median("skull") < median("grey_matter")


def test_head_ct_has_hounsfield_units_of_a_head():
    phantom = make_head_ct_phantom(2)
    voxels = phantom.volume.voxels

    def median(tissue: str) -> float:
        return float(np.median(voxels[phantom.tissue_mask(tissue)]))

    assert phantom.volume.modality == "CT" and phantom.volume.metadata["body_part"] == "HEAD"
    assert phantom.label == 0 and not phantom.lesion_mask.any()
    assert median("air") == pytest.approx(-1000, abs=15)
    assert median("skull") > 700
    assert median("csf") < median("white_matter") < median("grey_matter") < 50
    assert np.allclose(np.diag(phantom.volume.affine)[:3], (2.5, 1.6, 1.6))  # axial, like CT


# --------------------------------------------------------------------------------- lesions


@pytest.mark.parametrize("seed", range(4))
def test_lesions_exist_exactly_for_label_one(seed):
    normal, lesion = make_case(seed, 0), make_case(seed, 1)
    assert normal.label == 0 and normal.class_name == CLASS_NAMES[0] == "normal"
    assert lesion.label == 1 and lesion.class_name == CLASS_NAMES[1] == "lesion"
    assert not normal.lesion_mask.any()
    assert lesion.lesion_mask.any()
    assert lesion.lesion_mask.dtype == np.uint8 and set(np.unique(lesion.lesion_mask)) == {0, 1}
    assert lesion.lesion_mask.shape == lesion.volume.shape
    np.testing.assert_array_equal(lesion.lesion_mask == 1, lesion.tissue_mask(LESION))
    for case in (normal, lesion):
        assert case.volume.metadata["phantom_label"] == case.label
    assert normal.volume.metadata["phantom_lesions"] == []
    assert 1 <= len(lesion.volume.metadata["phantom_lesions"]) <= 3
    json.dumps(lesion.volume.metadata)  # safe, plain metadata that case files can store


@pytest.mark.parametrize("seed", range(3))
def test_a_case_pair_differs_only_around_its_lesions(seed):
    normal, lesion = make_case(seed, 0), make_case(seed, 1)
    changed = normal.volume.voxels != lesion.volume.voxels
    near_lesion = ndimage.binary_dilation(lesion.lesion_mask, iterations=3)
    assert changed.any()
    assert not (changed & ~near_lesion).any()


@pytest.mark.parametrize("seed", range(4))
def test_each_lesion_shifts_its_voxels_by_its_recorded_contrast(seed):
    normal, lesion = make_case(seed, 0), make_case(seed, 1)
    difference = lesion.volume.voxels.astype(float) - normal.volume.voxels
    components, _ = ndimage.label(lesion.lesion_mask)
    for record in lesion.volume.metadata["phantom_lesions"]:
        centre = np.rint(lesion.volume.world_to_index(record["centre_mm"])[0]).astype(int)
        component = components == components[tuple(centre)]
        assert 20 <= abs(record["contrast"]) <= 60
        shift = difference[component].mean()
        assert np.sign(shift) == np.sign(record["contrast"])
        assert abs(shift) >= 0.3 * abs(record["contrast"])  # partial volume dilutes small ones


def test_a_lesion_stands_out_from_the_organ_around_it():
    phantom = small_ct(8, lesions=1, lesion_radius_mm=(12.0, 14.0), lesion_contrast_hu=(40, 50))
    (record,) = phantom.volume.metadata["phantom_lesions"]
    voxels = phantom.volume.voxels
    core = ndimage.binary_erosion(phantom.lesion_mask, iterations=1)
    ring = ndimage.binary_dilation(phantom.lesion_mask, iterations=3) & ~ndimage.binary_dilation(
        phantom.lesion_mask, iterations=1
    )
    ring &= phantom.tissue_mask(record["site"])
    assert core.sum() > 20 and ring.sum() > 20
    difference = voxels[core].mean() - voxels[ring].mean()
    assert np.sign(difference) == np.sign(record["contrast"])
    assert abs(difference) > 25
    assert record["site"] in ("liver", "spleen", "kidney")


def test_lesion_count_can_be_chosen():
    assert small_ct(0, lesions=0).label == 0
    assert len(small_ct(0, lesions=3).volume.metadata["phantom_lesions"]) == 3
    with pytest.raises(ValueError, match="lesions"):
        small_ct(0, lesions=-1)
    mr = make_mr_phantom(0, lesions=2)
    assert mr.label == 1
    assert {r["site"] for r in mr.volume.metadata["phantom_lesions"]} == {"white_matter"}


# -------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize(
    ("make", "spacing"),
    [
        (make_ct_phantom, (2.5, 1.5, 1.5)),
        (make_ct_phantom, (3.0, 0.8, 0.8)),
        (make_mr_phantom, (3.0, 2.0, 2.0)),
    ],
)
def test_affine_carries_the_requested_spacing(make, spacing):
    phantom = make(0, shape=(20, 64, 64), spacing=spacing)
    assert spacing_of(phantom.volume.affine) == pytest.approx(spacing)
    assert phantom.volume.spacing == pytest.approx(spacing)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ct_anatomy_is_oriented_in_world_space(seed):
    phantom = small_ct(seed)
    lungs, kidneys = centroid_world(phantom, "lung"), centroid_world(phantom, "kidney")
    canal, liver, spleen = (centroid_world(phantom, t) for t in ("csf", "liver", "spleen"))
    body = phantom.volume.index_to_world(
        np.array(ndimage.center_of_mass(phantom.volume.voxels > -500))
    )[0]
    assert lungs[0] < kidneys[0]  # world axis 0 is inferior: the lungs are superior
    assert canal[1] > body[1]  # world axis 1 is posterior: the spine is at the back
    assert liver[2] < spleen[2]  # world axis 2 is left: the liver is on the patient's right


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ct_is_stored_as_an_axial_scan_reads(seed):
    """Lungs in the first slices, the belly at the top rows, the patient's left in high columns."""
    phantom = small_ct(seed)
    lung_z, _, _ = ndimage.center_of_mass(phantom.tissue_mask("lung"))
    kidney_z, _, _ = ndimage.center_of_mass(phantom.tissue_mask("kidney"))
    _, canal_y, _ = ndimage.center_of_mass(phantom.tissue_mask("csf"))
    _, _, liver_x = ndimage.center_of_mass(phantom.tissue_mask("liver"))
    _, _, spleen_x = ndimage.center_of_mass(phantom.tissue_mask("spleen"))
    body = phantom.volume.voxels > -500
    rows = np.flatnonzero(body.any(axis=(0, 2)))
    assert lung_z < kidney_z
    assert canal_y > (rows[0] + rows[-1]) / 2  # anterior (low y) is the top of a slice
    assert liver_x < spleen_x
    assert np.all(np.diag(phantom.volume.affine)[:3] > 0)


def test_mr_is_stored_as_canonical_ras_nifti_with_the_head_upright():
    phantom = make_mr_phantom(2)
    np.testing.assert_allclose(phantom.volume.nifti_affine()[:3, :3], np.diag([2.0, 2.0, 3.0]))
    head = phantom.volume.voxels > 60
    world_i = phantom.volume.index_to_world(
        np.c_[np.arange(head.shape[0]), np.zeros((head.shape[0], 2))]
    )
    superior, inferior = np.argmin(world_i[:, 0]), np.argmax(world_i[:, 0])
    assert head[superior].sum() < head[inferior].sum()  # the vertex narrows; the neck is cut


def test_tissue_masks_cover_the_grid_once():
    phantom = small_ct(1)
    assert phantom.tissue_names[-1] == LESION
    assert phantom.tissues.shape == phantom.volume.shape
    assert phantom.tissues.max() < len(phantom.tissue_names)
    with pytest.raises(ValueError):
        phantom.tissue_mask("brain")


# ----------------------------------------------------------------------------- sample data


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("samples")
    write_sample_data(out)
    return out


def test_sample_data_is_small_and_where_the_plugin_expects_it(sample_dir):
    slices = sorted((sample_dir / "ct_phantom").iterdir())
    assert 64 <= len(slices) <= 96
    assert {p.name for p in sample_dir.glob("*.nii.gz")} == {
        "mr_brain_tumour.nii.gz",
        "mr_brain_infarct.nii.gz",
    }
    total = sum(p.stat().st_size for p in sample_dir.rglob("*") if p.is_file())
    assert total < 4_000_000


@pytest.mark.parametrize(
    ("name", "make", "truth"),
    [
        ("mr_brain_tumour.nii.gz", sample_mr_phantom, "tumour"),
        ("mr_brain_infarct.nii.gz", sample_mr_infarct_phantom, "infarct"),
    ],
)
def test_sample_mr_round_trips_through_load_scans(sample_dir, name, make, truth):
    phantom = make()
    expected = phantom.volume
    (volume,) = load_scans(sample_dir / name).volumes
    voxels, affine = _reoriented_like(volume, expected)
    np.testing.assert_array_equal(voxels, expected.voxels)
    np.testing.assert_allclose(affine, expected.affine, atol=1e-4)
    assert volume.modality == "MR"
    assert phantom.class_name == truth


def _reoriented_like(volume: Volume, reference: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Voxels and affine of an axis-aligned ``volume`` with its index axes flipped to run like
    ``reference``'s (a reader may stack slices in either order; the anatomy must not move)."""
    voxels, affine = volume.voxels, volume.affine.copy()
    for k in range(3):
        if affine[k, k] * reference.affine[k, k] < 0:
            voxels = np.flip(voxels, axis=k)
            affine[:3, 3] += affine[:3, k] * (volume.shape[k] - 1)
            affine[:3, k] *= -1
    return voxels, affine


def test_sample_ct_round_trips_through_load_scans(sample_dir):
    expected = sample_ct_phantom().volume
    result = load_scans(sample_dir / "ct_phantom")
    (volume,) = result.volumes
    assert not result.skipped
    assert volume.modality == "CT"
    voxels, affine = _reoriented_like(volume, expected)
    np.testing.assert_array_equal(voxels, expected.voxels)
    np.testing.assert_allclose(affine, expected.affine, atol=1e-3)


@pytest.fixture(scope="module")
def second_sample_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("samples_again")
    write_sample_data(out)
    return out


@pytest.mark.parametrize("name", ["mr_brain_tumour.nii.gz", "mr_brain_infarct.nii.gz"])
def test_sample_nifti_is_byte_for_byte_reproducible(sample_dir, second_sample_dir, name):
    assert (sample_dir / name).read_bytes() == (second_sample_dir / name).read_bytes()


def test_sample_dicom_is_byte_for_byte_reproducible(sample_dir, second_sample_dir):
    def files(folder: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted((folder / "ct_phantom").iterdir())}

    assert files(sample_dir) == files(second_sample_dir)
