"""Preprocessing: the model grid lands where the scan is, values come back where they belong."""

import numpy as np
import pytest

from napari_scan_classifier.errors import InvalidInputError
from napari_scan_classifier.preprocess import (
    Box,
    check_scan,
    model_grid,
    normalise,
    prepare,
    slice_index_map,
    to_source_grid,
    validate_intensity,
)
from napari_scan_classifier.volume import Volume

WIDE_WINDOW = {"kind": "ct_window", "center": 500.0, "width": 3000.0}


def oblique_affine() -> np.ndarray:
    """Anisotropic voxels, rotated 20 degrees in the P-L plane, shifted off the origin."""
    angle = np.deg2rad(20)
    rotation = np.eye(3)
    rotation[1:, 1:] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([2.5, 0.8, 0.6])
    affine[:3, 3] = [-40.0, 12.0, 7.5]
    return affine


def bright_point_volume(index: tuple[int, int, int]) -> Volume:
    voxels = np.zeros((40, 50, 60), dtype=np.int16)
    voxels[index] = 2000
    return Volume(voxels, oblique_affine(), modality="CT")


def ramp_volume() -> Volume:
    z, y, x = np.meshgrid(*(np.arange(n) for n in (30, 36, 40)), indexing="ij")
    return Volume((10.0 * z + 3.0 * y + x).astype(np.float32), oblique_affine(), modality="CT")


@pytest.mark.parametrize(
    ("spacing", "box"),
    [
        (None, None),
        ((2.0, 2.0, 2.0), Box((20, 10, 30), (30, 30, 50))),
        ((1.5, 1.5, 1.5), "world box around the point"),
    ],
)
def test_a_world_point_lands_on_the_right_model_voxel(spacing, box):
    index = (23, 17, 41)
    volume = bright_point_volume(index)
    point = volume.index_to_world(index)[0]
    if box == "world box around the point":
        box = Box(point - 12.0, point + 12.0, space="world")
    grid_input, grid = prepare(volume, (16, 16, 16), spacing, WIDE_WINDOW, box)

    peak = np.unravel_index(np.argmax(grid_input), grid.shape)
    assert np.all(np.abs(grid.world_to_model(point)[0] - peak) <= 1.0)
    assert np.linalg.norm(grid.model_to_world(peak)[0] - point) <= np.linalg.norm(grid.spacing)


def test_grid_maps_are_consistent_and_centred():
    volume = ramp_volume()
    grid = model_grid(volume, (8, 12, 10), (3.0, 2.0, 2.5))
    model_points = np.array([[0, 0, 0], [7, 11, 9], [3.5, 5.5, 4.5], [1.2, 7.7, 2.1]])

    source = grid.model_to_source(model_points)
    np.testing.assert_allclose(grid.model_to_world(model_points), volume.index_to_world(source))
    np.testing.assert_allclose(grid.source_to_model(source), model_points, atol=1e-9)
    np.testing.assert_allclose(grid.world_to_model(grid.model_to_world(model_points)), model_points)
    np.testing.assert_allclose(grid.spacing, (3.0, 2.0, 2.5))
    centre = (np.asarray(volume.shape) - 1) / 2
    np.testing.assert_allclose(grid.model_to_source([(3.5, 5.5, 4.5)])[0], centre)


def test_round_trip_to_the_source_grid_restores_a_ramp():
    volume = ramp_volume()
    grid_input, grid = prepare(volume, (12, 16, 10), None, WIDE_WINDOW)
    back = to_source_grid(grid_input, grid, volume)
    hu = back * WIDE_WINDOW["width"] + WIDE_WINDOW["center"] - WIDE_WINDOW["width"] / 2

    assert back.shape == volume.shape
    # Linear data survive block averaging and linear interpolation exactly between the first
    # and last model voxel centres; beyond them the edge values are held.
    first = np.ceil(grid.model_to_source([(0, 0, 0)])[0]).astype(int)
    last = np.floor(grid.model_to_source([np.asarray(grid.shape) - 1])[0]).astype(int)
    interior = tuple(slice(a, b + 1) for a, b in zip(first, last, strict=True))
    np.testing.assert_allclose(hu[interior], volume.voxels[interior], atol=0.05)


def test_to_source_grid_fills_outside_the_field_of_view():
    volume = ramp_volume()
    grid = model_grid(volume, (4, 4, 4), (5.0, 2.0, 2.0), Box((10, 10, 10), (20, 20, 20)))
    back = to_source_grid(np.ones(grid.shape, np.float32), grid, volume, cval=-1.0)

    inside = grid.source_to_model(np.argwhere(back == 1.0))
    assert np.all((inside >= -0.5) & (inside <= 3.5))
    assert back[0, 0, 0] == -1.0
    assert back[15, 15, 15] == 1.0


def test_slice_index_map_interpolates_model_slices():
    volume = ramp_volume()
    grid = model_grid(volume, (8, 8, 8), None, Box((6, 0, 0), (22, 36, 40)))
    slice_map = slice_index_map(grid)
    per_slice = slice_map.apply(np.arange(8.0))
    expected = grid.source_to_model(
        np.stack([np.arange(30), 0 * np.arange(30), 0 * np.arange(30)], 1)
    )

    assert per_slice.shape == (30,)
    assert np.all(np.isnan(per_slice[:6])) and np.all(np.isnan(per_slice[22:]))
    inner = slice(8, 20)  # between the first and last model slice centres
    np.testing.assert_allclose(per_slice[inner], expected[inner, 0], atol=1e-6)
    assert slice_map.apply(np.ones((8, 3))).shape == (30, 3)


def test_ct_window_values_are_exact_at_known_hu():
    hu = np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0, 90.0])
    window = {"kind": "ct_window", "center": 40, "width": 400}
    np.testing.assert_array_equal(normalise(hu, window), [0.0, 0.0, 0.5, 1.0, 1.0, 0.625])

    voxels = np.full((6, 5, 4), -160, dtype=np.int16)
    voxels[3:] = 140
    grid_input, grid = prepare(
        Volume(voxels, np.diag([2.0, 1.0, 1.0, 1.0])), (6, 5, 4), None, window
    )
    np.testing.assert_allclose(grid.scale, 1.0)
    assert set(np.unique(grid_input)) == {0.0, 0.75}
    assert grid_input.dtype == np.float32


def test_mr_normalisations():
    rng = np.random.default_rng(0)
    voxels = np.zeros((20, 20, 20), np.float32)
    voxels[5:15, 5:15, 5:15] = rng.normal(300.0, 20.0, (10, 10, 10))
    volume = Volume(voxels, np.eye(4), modality="MR")

    z, _ = prepare(volume, (20, 20, 20), None, {"kind": "zscore"})
    head = z[5:15, 5:15, 5:15]
    assert abs(head.mean()) < 0.05 and abs(head.std() - 1.0) < 0.05
    p, _ = prepare(volume, (20, 20, 20), None, {"kind": "percentile", "low": 50, "high": 99})
    assert p.min() == 0.0 and p.max() == 1.0


@pytest.mark.parametrize(
    ("voxels", "message"),
    [
        (np.zeros((0, 4, 4)), "empty"),
        (np.zeros((1, 64, 64)), "single 2D image"),
        (np.zeros((5, 64, 64, 3), np.uint8), "colour"),
        (np.zeros((64, 64, 3), np.uint8), "RGB"),
        (np.zeros((2, 5, 64, 64)), "3D volume"),
        (np.zeros((64, 64)), "3D volume"),
        (np.zeros((4, 4, 4), complex), "greyscale"),
    ],
)
def test_unusable_arrays_are_refused(voxels, message):
    with pytest.raises(InvalidInputError, match=message):
        check_scan(voxels)


def test_nan_and_constant_scans_are_refused():
    voxels = np.ones((8, 8, 8), np.float32)
    with pytest.raises(InvalidInputError, match="same value"):
        prepare(Volume(voxels, np.eye(4)), (4, 4, 4), None, WIDE_WINDOW)
    voxels[0, 0, :2] = np.nan
    voxels[1] = 5.0
    with pytest.raises(InvalidInputError, match="2 voxels without a value"):
        prepare(Volume(voxels, np.eye(4)), (4, 4, 4), None, WIDE_WINDOW)


def test_bad_regions_and_recipes_are_refused():
    volume = ramp_volume()
    with pytest.raises(InvalidInputError, match="outside the scan"):
        model_grid(volume, (4, 4, 4), None, Box((100, 0, 0), (110, 10, 10)))
    with pytest.raises(InvalidInputError, match="empty"):
        model_grid(volume, (4, 4, 4), None, Box((5, 5, 5), (5, 10, 10)))
    for spec in (
        {"kind": "ct_window", "center": 40},
        {"kind": "gamma"},
        {"kind": "percentile", "low": 90, "high": 10},
    ):
        with pytest.raises(ValueError):
            validate_intensity(spec)
