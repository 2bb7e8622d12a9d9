"""Volume <-> layer data: geometry passes through untouched, contrast follows the modality."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Image, Labels, Layer

from napari_scan_classifier.errors import InvalidInputError
from napari_scan_classifier.plugin.layers import (
    VOLUME_KEY,
    layer_to_volume,
    volume_to_layer_data,
)
from napari_scan_classifier.volume import Volume


def _affine() -> np.ndarray:
    """Oblique, anisotropic, off-origin: any axis mix-up or dropped term shows."""
    angle = np.deg2rad(15)
    rotation = np.array(
        [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([2.5, 0.8, 0.6])
    affine[:3, 3] = [-100.0, 20.0, -30.0]
    return affine


def _ct(**metadata: object) -> Volume:
    voxels = np.linspace(-1000, 2000, 4 * 5 * 6).reshape(4, 5, 6).astype(np.int16)
    return Volume(voxels, _affine(), modality="CT", metadata=dict(metadata))


def test_image_layer_carries_affine_name_and_volume() -> None:
    volume = _ct(series_description="Chest", series_number=3)

    data, meta, layer_type = volume_to_layer_data(volume)

    assert layer_type == "image"
    assert np.shares_memory(data, volume.voxels)
    np.testing.assert_array_equal(data, volume.voxels)
    np.testing.assert_array_equal(meta["affine"], volume.affine)
    assert meta["name"] == "CT #3 Chest"
    assert meta["metadata"][VOLUME_KEY] is volume
    assert meta["metadata"]["series_description"] == "Chest"
    assert meta["colormap"] == "gray"


@pytest.mark.parametrize(
    ("metadata", "limits"),
    [
        ({}, (-160.0, 240.0)),  # no stored window: soft tissue W400/L40
        ({"window_center": 50.0, "window_width": 350.0}, (-125.0, 225.0)),
        ({"window_center": [-600.0, 40.0], "window_width": [1500.0, 400.0]}, (-1350.0, 150.0)),
        ({"window_center": 40.0, "window_width": 0.0}, (-160.0, 240.0)),  # nonsense: ignored
    ],
)
def test_ct_contrast_from_dicom_window_or_soft_tissue(metadata: dict, limits: tuple) -> None:
    _, meta, _ = volume_to_layer_data(_ct(**metadata))
    assert meta["contrast_limits"] == pytest.approx(limits)


def test_mr_contrast_from_percentiles() -> None:
    voxels = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    _, meta, _ = volume_to_layer_data(Volume(voxels, np.eye(4), modality="MR"))
    assert meta["contrast_limits"] == pytest.approx((9.99, 994.005))


def test_4d_volume_embeds_the_spatial_affine() -> None:
    volume = Volume(np.zeros((3, 4, 5, 6), np.float32), _affine(), modality="MR")

    _, meta, _ = volume_to_layer_data(volume)
    layer = Image(volume.voxels, **meta)

    expected = np.eye(5)
    expected[1:, 1:] = volume.affine
    np.testing.assert_allclose(meta["affine"], expected)
    np.testing.assert_allclose(
        layer.data_to_world((2, 1, 2, 3))[1:], volume.index_to_world([1, 2, 3])[0]
    )
    np.testing.assert_allclose(layer_to_volume(layer).affine, volume.affine)


def test_sagittal_acquisition_is_shown_through_world_aligned_axes() -> None:
    """napari slices along data axes: each must run along the world axis at its position."""
    sagittal = np.array(  # slices towards L, rows towards I, columns towards P
        [[0.0, 1.2, 0.0, -90.0], [0.0, 0.0, 0.9, -110.0], [3.0, 0.0, 0.0, -60.0], [0, 0, 0, 1]]
    )
    voxels = np.random.default_rng(1).normal(size=(4, 5, 6)).astype(np.float32)
    volume = Volume(voxels, sagittal, modality="MR")

    data, meta, _ = volume_to_layer_data(volume)
    layer = Layer.create(data, meta, "image")

    assert data.shape == (5, 6, 4)
    assert np.shares_memory(data, voxels)
    np.testing.assert_allclose(
        meta["affine"], np.diag([1.2, 0.9, 3.0, 1.0]) + _translation(sagittal)
    )
    assert meta["metadata"][VOLUME_KEY] is volume  # widgets get the scan as acquired
    for index in [(0, 0, 0), (3, 1, 5), (2, 4, 1)]:
        moved = layer.world_to_data(volume.index_to_world(index)[0])
        assert data[tuple(np.round(moved).astype(int))] == voxels[index]
    back = layer_to_volume(layer)
    np.testing.assert_allclose(back.index_to_world([1, 5, 3]), volume.index_to_world([3, 1, 5]))


def _translation(affine: np.ndarray) -> np.ndarray:
    out = np.zeros((4, 4))
    out[:3, 3] = affine[:3, 3]
    return out


def test_layer_to_volume_round_trip_keeps_safe_metadata() -> None:
    volume = _ct(series_description="Chest", window_center=40.0, window_width=400.0)
    layer = Layer.create(*volume_to_layer_data(volume))

    back = layer_to_volume(layer)

    assert np.shares_memory(back.voxels, volume.voxels)
    np.testing.assert_allclose(back.affine, volume.affine)
    assert back.modality == "CT"
    assert back.metadata == volume.metadata


def test_layer_to_volume_includes_napari_scale_and_translate() -> None:
    """A layer moved in napari (scale/translate on top of the affine) saves where it is shown."""
    layer = Labels(
        np.zeros((4, 5, 6), np.uint8), affine=_affine(), scale=(2, 1, 1), translate=(0, 5, 0)
    )

    volume = layer_to_volume(layer)

    index = np.array([3.0, 2.0, 1.0])
    np.testing.assert_allclose(volume.index_to_world(index)[0], layer.data_to_world(index))
    assert volume.modality == "SEG"


def test_2d_layer_is_refused_with_a_clear_error() -> None:
    with pytest.raises(InvalidInputError, match="2D"):
        layer_to_volume(Image(np.zeros((5, 6))))
