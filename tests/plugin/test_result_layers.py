"""Result layers: maps lie exactly over their scan, and a new result updates the old layer."""

from __future__ import annotations

import numpy as np
import pytest
from geometry_checks import assert_same_scan
from napari.components import ViewerModel
from napari.layers import Image, Layer

from napari_scan_classifier.errors import InvalidInputError
from napari_scan_classifier.plugin.layers import (
    SOURCE_KEY,
    find_result_layer,
    is_result_layer,
    layer_to_volume,
    map_to_layer_data,
    put_result_layer,
    remove_result_layer,
    scan_volume,
    volume_to_layer_data,
)
from napari_scan_classifier.volume import Volume

# A sagittal acquisition: slices towards L, rows towards I, columns towards P (napari shows it
# through transposed, world-aligned axes, so the map must be transposed the same way).
SAGITTAL = np.array(
    [[0.0, 0.9, 0.0, 40.0], [0.0, 0.0, 1.2, -60.0], [3.0, 0.0, 0.0, -21.0], [0, 0, 0, 1]]
)


def _scan(affine: np.ndarray = SAGITTAL) -> Volume:
    voxels = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    return Volume(voxels, affine, modality="MR", metadata={"series_description": "T1 sag"})


def _add(viewer: ViewerModel, layer_data: tuple) -> Layer:
    layer = Layer.create(*layer_data)
    viewer.layers.append(layer)
    return layer


def test_map_layer_has_the_scan_layers_affine_and_alignment() -> None:
    viewer = ViewerModel()
    volume = _scan()
    scan = _add(viewer, volume_to_layer_data(volume))
    values = np.random.default_rng(0).random(volume.shape).astype(np.float32)

    overlay = _add(viewer, map_to_layer_data(volume, values, "map", {"note": 1}))

    np.testing.assert_allclose(overlay.affine.affine_matrix, scan.affine.affine_matrix)
    assert overlay.data.shape == scan.data.shape != volume.shape
    assert_same_scan(layer_to_volume(overlay), volume.with_voxels(values))
    assert overlay.blending == "additive" and overlay.colormap.name == "inferno"
    assert tuple(overlay.contrast_limits) == (0.0, 1.0)
    assert overlay.metadata == {"note": 1}


def test_result_layer_is_updated_in_place_and_found_by_its_scan_not_its_name() -> None:
    viewer = ViewerModel()
    volume = _scan(np.diag([2.0, 1.0, 1.0, 1.0]))
    scan = _add(viewer, volume_to_layer_data(volume))
    other = _add(viewer, volume_to_layer_data(volume))
    first = np.zeros(volume.shape, dtype=np.float32)

    layer = put_result_layer(
        viewer.layers, scan, "saliency", map_to_layer_data(volume, first, "old", {})
    )
    layer.opacity = 0.3  # the user's choice
    scan.name = "renamed by the user"
    second = np.ones(volume.shape, dtype=np.float32)
    again = put_result_layer(
        viewer.layers, scan, "saliency", map_to_layer_data(volume, second, "new", {"v": 2})
    )

    assert again is layer and len(viewer.layers) == 3
    assert layer.name == "new" and layer.opacity == 0.3
    np.testing.assert_array_equal(layer.data, second)
    assert layer.metadata["v"] == 2 and layer.metadata[SOURCE_KEY] == scan.unique_id
    assert is_result_layer(layer) and not is_result_layer(scan)
    assert find_result_layer(viewer.layers, other, "saliency") is None
    assert find_result_layer(viewer.layers, scan, "probability") is None

    remove_result_layer(viewer.layers, scan, "saliency")
    assert list(viewer.layers) == [scan, other]


def test_scan_volume_is_the_volume_as_acquired() -> None:
    volume = _scan()
    layer = Layer.create(*volume_to_layer_data(volume))
    assert scan_volume(layer) is volume


def test_scan_volume_of_a_plain_array_uses_the_layers_geometry() -> None:
    layer = Image(np.ones((4, 5, 6), dtype=np.float32), scale=(3.0, 1.0, 0.5), name="x")
    volume = scan_volume(layer)
    assert volume.shape == (4, 5, 6)
    np.testing.assert_allclose(volume.spacing, (3.0, 1.0, 0.5))


@pytest.mark.parametrize(
    ("layer", "reason"),
    [
        (Image(np.zeros((8, 9), dtype=np.float32), name="xray"), "2D"),
        (Image(np.zeros((4, 8, 9, 3), dtype=np.uint8), rgb=True, name="photo"), "RGB"),
        (Layer.create(np.zeros((4, 8, 9), dtype=np.uint8), {"name": "seg"}, "labels"), "labels"),
    ],
    ids=["2D", "RGB", "labels"],
)
def test_layers_that_are_not_scans_are_refused(layer: Layer, reason: str) -> None:
    with pytest.raises(InvalidInputError, match=reason):
        scan_volume(layer)
