"""A coronal or sagittal series reaches the model as the axial one does: the same scan stored with
its axes permuted (voxels and affine columns alike, so the same anatomy in world mm) gives the
same model input, probabilities, input-check summary and saliency map (on its own grid)."""

from __future__ import annotations

import numpy as np
import pytest
from model_fixtures import tiny_bundle

from napari_scan_classifier.applicability import summarise
from napari_scan_classifier.inference import classify
from napari_scan_classifier.phantoms import make_ct_phantom
from napari_scan_classifier.preprocess import model_grid, prepare, resample_to_grid, to_source_grid
from napari_scan_classifier.saliency import saliency_map
from napari_scan_classifier.volume import Volume

WINDOW = {"kind": "ct_window", "center": 40.0, "width": 400.0}
CORONAL, SAGITTAL, SWAPPED_IN_PLANE = (1, 0, 2), (2, 1, 0), (0, 2, 1)


@pytest.fixture(scope="module")
def axial() -> Volume:
    return make_ct_phantom(1, (24, 40, 48), (5.0, 4.0, 4.0)).volume


def stored(volume: Volume, order: tuple[int, int, int]) -> Volume:
    """``volume`` with data axes ``order`` (data axis i is the original axis order[i])."""
    return Volume(
        np.transpose(volume.voxels, order), volume.affine[:, [*order, 3]], "CT", volume.metadata
    )


@pytest.mark.parametrize("order", [CORONAL, SAGITTAL, SWAPPED_IN_PLANE])
def test_the_model_input_and_maps_back_do_not_depend_on_the_stored_axis_order(axial, order):
    other = stored(axial, order)

    x, grid = prepare(axial, (16, 20, 24), None, WINDOW)
    y, other_grid = prepare(other, (16, 20, 24), None, WINDOW)

    assert other.world_order() == tuple(int(a) for a in np.argsort(order))
    np.testing.assert_array_equal(x, y)
    np.testing.assert_allclose(other_grid.affine, grid.affine)
    ramp = np.arange(x.size, dtype=np.float32).reshape(x.shape)
    back = to_source_grid(ramp, other_grid, other)
    assert back.shape == other.shape
    np.testing.assert_allclose(back, np.transpose(to_source_grid(ramp, grid, axial), order))
    mask = resample_to_grid(np.transpose(axial.voxels > 100, order).astype(float), other_grid, 0)
    np.testing.assert_array_equal(mask, resample_to_grid((axial.voxels > 100) * 1.0, grid, 0))


def test_a_spacing_grid_is_placed_alike(axial):
    grid = model_grid(axial, (12, 16, 16), (6.0, 5.0, 5.0))
    other = model_grid(stored(axial, SAGITTAL), (12, 16, 16), (6.0, 5.0, 5.0))

    assert other.order == (2, 1, 0) and grid.order == (0, 1, 2)
    np.testing.assert_allclose(other.affine, grid.affine)
    assert tuple(other.spacing) == pytest.approx(tuple(grid.spacing))
    assert tuple(grid.spacing) == pytest.approx((6.0, 5.0, 5.0))


def test_classification_summary_and_saliency_follow_the_anatomy(axial):
    bundle = tiny_bundle("slice_gru", grid=(16, 20, 24))
    coronal, swapped = stored(axial, CORONAL), stored(axial, SWAPPED_IN_PLANE)

    plain = classify(axial, bundle, method="none")
    across = classify(coronal, bundle, method="none")
    in_plane = classify(swapped, bundle, method="none")

    assert across.probabilities == pytest.approx(plain.probabilities, abs=1e-6)
    assert in_plane.probabilities == pytest.approx(plain.probabilities, abs=1e-6)
    # The model's slices are axial: the coronal series' own slices get no per-slice score.
    assert across.per_slice is None
    np.testing.assert_allclose(in_plane.per_slice, plain.per_slice)
    for key in ("fov_mm", "spacing_mm", "edge_tissue_fraction", "neighbour_correlation"):
        assert summarise(coronal)[key] == pytest.approx(summarise(axial)[key])
    explained = saliency_map(coronal, bundle, method="gradcam", target_class="lesion")
    reference = saliency_map(axial, bundle, method="gradcam", target_class="lesion")
    assert explained.values.shape == coronal.shape
    np.testing.assert_allclose(explained.values, np.transpose(reference.values, CORONAL), atol=1e-5)
