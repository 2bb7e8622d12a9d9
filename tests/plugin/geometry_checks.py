"""Geometry assertions shared by the plugin tests."""

from __future__ import annotations

import numpy as np

from napari_scan_classifier.volume import Volume


def assert_same_scan(actual: Volume, expected: Volume) -> None:
    """Every voxel of ``expected`` sits, with its value, at the same world mm in ``actual``; the
    two may store their axes in different orders (napari needs world-aligned data axes)."""
    assert actual.voxels.size == expected.voxels.size
    indices = np.indices(expected.shape).reshape(3, -1).T
    mapped = actual.world_to_index(expected.index_to_world(indices))
    np.testing.assert_allclose(mapped, np.round(mapped), atol=1e-4)
    found = actual.voxels[tuple(np.round(mapped).astype(int).T)]
    np.testing.assert_array_equal(found, expected.voxels[tuple(indices.T)])
