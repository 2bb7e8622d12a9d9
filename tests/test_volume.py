"""Volume: the world convention and its conversions."""

from __future__ import annotations

import numpy as np
import pytest

from napari_scan_classifier.volume import (
    Volume,
    lps_to_world,
    nifti_to_zyx_affine,
    ras_to_world,
    world_to_lps,
    world_to_ras,
    zyx_to_nifti_affine,
)


def _translation(point: list[float]) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, 3] = point
    return affine


def test_lps_point_in_world_is_inferior_posterior_left() -> None:
    # LPS (x=L 10, y=P 20, z=S 30) -> world (I, P, L) = (-30, 20, 10)
    np.testing.assert_allclose(lps_to_world(_translation([10, 20, 30]))[:3, 3], [-30, 20, 10])
    # RAS (x=R 10, y=A 20, z=S 30) is LPS (-10, -20, 30) -> world (-30, -20, -10)
    np.testing.assert_allclose(ras_to_world(_translation([10, 20, 30]))[:3, 3], [-30, -20, -10])


def test_conversions_invert() -> None:
    rng = np.random.default_rng(1)
    affine = np.eye(4)
    affine[:3] = rng.normal(size=(3, 4))
    np.testing.assert_allclose(world_to_lps(lps_to_world(affine)), affine)
    np.testing.assert_allclose(world_to_ras(ras_to_world(affine)), affine)
    np.testing.assert_allclose(zyx_to_nifti_affine(nifti_to_zyx_affine(affine)), affine)


def test_index_world_round_trip_and_spacing() -> None:
    affine = np.diag([2.5, 0.7, 0.8, 1.0])
    affine[:3, 3] = [5, -3, 1]
    volume = Volume(np.zeros((4, 5, 6), np.int16), affine, modality="CT")
    points = volume.index_to_world([[1, 2, 3], [0, 0, 0]])
    np.testing.assert_allclose(points, [[7.5, -1.6, 3.4], [5, -3, 1]])
    np.testing.assert_allclose(volume.world_to_index(points), [[1, 2, 3], [0, 0, 0]])
    assert volume.spacing == pytest.approx((2.5, 0.7, 0.8))


def test_patient_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="patient_name"):
        Volume(np.zeros((2, 2, 2)), np.eye(4), metadata={"patient_name": "Doe^Jane"})


def test_display_name_uses_safe_fields_only() -> None:
    volume = Volume(
        np.zeros((2, 2, 2)),
        np.eye(4),
        modality="MR",
        metadata={"series_description": "T1 MPRAGE", "series_number": 5},
    )
    assert volume.display_name() == "MR #5 T1 MPRAGE"


def test_world_aligned_sagittal_acquisition_keeps_every_voxel_in_place() -> None:
    # Sagittal stack: data axis 0 runs along world L, axis 1 along -I, axis 2 along P.
    affine = np.array([[0, -1.0, 0, 50], [0, 0, 0.9, -10], [3.0, 0, 0, -60], [0, 0, 0, 1]])
    voxels = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    volume = Volume(voxels, affine, modality="MR")

    aligned = volume.world_aligned()

    assert aligned.voxels.shape == (5, 6, 4)
    assert np.shares_memory(aligned.voxels, voxels)
    np.testing.assert_allclose(np.abs(np.diag(aligned.affine[:3, :3])), [1.0, 0.9, 3.0])
    original = volume.index_to_world([[3, 2, 1]])
    np.testing.assert_allclose(aligned.index_to_world([[2, 1, 3]]), original)
    assert aligned.voxels[2, 1, 3] == voxels[3, 2, 1]
