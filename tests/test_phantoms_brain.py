"""Brain MR phantoms: three classes told apart only by their lesion, lesions where and how they
should appear on each contrast, acquisitions that vary, and the MR intensity recipe that makes
a scan's unit irrelevant."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_scan_classifier.phantoms import (
    BRAIN_CLASSES,
    CONTRASTS,
    SUBTLE,
    brain_triplet,
    make_brain_mr_phantom,
)
from napari_scan_classifier.preprocess import head_mask, normalise, prepare
from napari_scan_classifier.volume import Volume

SMALL = {"shape": (24, 80, 80), "spacing": (6.0, 2.8, 2.8)}


@pytest.mark.parametrize("contrast", CONTRASTS)
def test_a_triplet_differs_only_where_the_lesion_is(contrast):
    normal, tumour, infarct = brain_triplet(3, contrast=contrast, **SMALL)

    assert [p.class_name for p in (normal, tumour, infarct)] == list(BRAIN_CLASSES)
    assert [p.label for p in (normal, tumour, infarct)] == [0, 1, 2]
    assert normal.lesion_mask.sum() == 0
    for case in (tumour, infarct):
        assert case.lesion_mask.sum() > 200
        near = ndimage.binary_dilation(case.lesion_mask.astype(bool), iterations=2)
        np.testing.assert_array_equal(case.volume.voxels[~near], normal.volume.voxels[~near])
        np.testing.assert_array_equal(case.volume.affine, normal.volume.affine)
        assert np.any(case.volume.voxels[near] != normal.volume.voxels[near])


def _lesion_ratio(seed: int, lesion: str, contrast: str, **options) -> float:
    """Mean intensity of the lesion over the same voxels in the lesion-free twin."""
    normal = make_brain_mr_phantom(seed, "normal", contrast=contrast, **SMALL)
    case = make_brain_mr_phantom(seed, lesion, contrast=contrast, **SMALL, **options)
    inside = case.lesion_mask.astype(bool)
    return float(case.volume.voxels[inside].mean() / normal.volume.voxels[inside].mean())


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_an_infarct_is_bright_on_flair_and_subtle_on_t1(seed):
    clear = _lesion_ratio(seed, "infarct", "FLAIR")
    assert clear > 1.4
    assert 0.8 < _lesion_ratio(seed, "infarct", "T1") < 0.97
    assert 1.05 < _lesion_ratio(seed, "infarct", "FLAIR", lesions=SUBTLE) < clear


def test_an_infarct_is_a_wedge_of_cortex_and_white_matter_on_one_side():
    for seed in range(4):
        normal = make_brain_mr_phantom(seed, "normal", **SMALL)
        infarct = make_brain_mr_phantom(seed, "infarct", **SMALL)
        inside = infarct.lesion_mask.astype(bool)
        under = set(np.unique(normal.tissues[inside]))
        assert under == {
            normal.tissue_names.index("grey_matter"),
            normal.tissue_names.index("white_matter"),
        }
        record = infarct.volume.metadata["phantom_lesions"][0]
        assert record["territory"] in ("ACA", "MCA", "PCA")
        left = infarct.volume.index_to_world(np.argwhere(inside))[:, 2]  # world L, mm
        centre = normal.volume.index_to_world(np.argwhere(normal.tissues > 2))[:, 2].mean()
        sides = np.sign(left - centre)
        assert abs(sides.mean()) > 0.9  # one hemisphere (the midline is blurred by a voxel)
        assert (sides.mean() > 0) == (record["side"] == "left")


def test_tumours_carry_oedema_and_some_an_enhancing_ring_on_t1():
    rings = []
    for seed in range(8):
        normal = make_brain_mr_phantom(seed, "normal", contrast="T1", **SMALL)
        tumour = make_brain_mr_phantom(seed, "tumour", contrast="T1", **SMALL)
        record = tumour.volume.metadata["phantom_lesions"][0]
        rings.append(record["ring"])
        inside = tumour.lesion_mask.astype(bool)
        white = normal.tissues == normal.tissue_names.index("white_matter")
        assert np.count_nonzero(inside & white) > 0.5 * np.count_nonzero(inside)  # oedema
        if record["ring"]:
            assert tumour.volume.voxels[inside].max() > 1.15 * np.median(
                normal.volume.voxels[white]
            )
    assert 2 <= sum(rings) <= 6


def test_acquisitions_vary_by_seed_but_not_by_class():
    seen = {"contrast": set(), "shape": set(), "spacing": set(), "signs": set(), "gain": []}
    for seed in range(10):
        phantom = make_brain_mr_phantom(seed, "tumour")
        twin = make_brain_mr_phantom(seed, "infarct")
        volume = phantom.volume
        assert volume.shape == twin.volume.shape
        assert volume.metadata["series_description"] == twin.volume.metadata["series_description"]
        seen["contrast"].add(volume.metadata["series_description"].split()[1])
        seen["shape"].add(volume.shape)
        seen["spacing"].add(tuple(np.round(np.abs(np.diag(volume.affine)[:3]), 2)))
        seen["signs"].add(tuple(np.sign(np.diag(volume.affine)[:3])))
        seen["gain"].append(np.percentile(volume.voxels, 99))
    assert seen["contrast"] == {"T1", "FLAIR"}
    assert len(seen["shape"]) == len(seen["spacing"]) == 10
    assert len(seen["signs"]) >= 4
    assert max(seen["gain"]) > 2 * min(seen["gain"])  # the scanner's unit is arbitrary


def test_the_head_mask_takes_in_dark_skull_and_csf():
    phantom = make_brain_mr_phantom(4, "normal", contrast="FLAIR", **SMALL)
    values = phantom.volume.voxels.astype(np.float32)
    mask = head_mask(values)
    inside_head = phantom.tissues > 0
    assert np.mean(mask[inside_head]) > 0.97
    assert np.mean(mask[~inside_head]) < 0.05
    skull = phantom.tissues == phantom.tissue_names.index("skull")
    assert np.mean(mask[skull]) > 0.9  # darker than the threshold, inside the head


@pytest.mark.parametrize("kind", ["zscore", "percentile"])
def test_the_mr_recipe_ignores_the_scanner_unit(kind):
    spec = {"kind": kind, "mask": "head"}
    phantom = make_brain_mr_phantom(6, "tumour")
    scaled = Volume(
        phantom.volume.voxels * 3.7 + 200.0, phantom.volume.affine, "MR", phantom.volume.metadata
    )
    shape, spacing = (24, 96, 96), (6.5, 2.2, 2.2)
    original, _ = prepare(phantom.volume, shape, spacing, spec)
    rescaled, _ = prepare(scaled, shape, spacing, spec)
    np.testing.assert_allclose(rescaled, original, atol=1e-4)
    assert np.ptp(original) >= 1.0  # not a constant: the scan is there


def test_an_unknown_statistics_mask_is_refused():
    with pytest.raises(ValueError, match="mask"):
        normalise(np.ones((4, 4, 4)), {"kind": "zscore", "mask": "brain"})
