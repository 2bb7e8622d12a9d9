"""Writers through napari: a layer saved as NIfTI reads back with the same voxels at the same
world mm."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from geometry_checks import assert_same_scan
from napari.components import ViewerModel

from napari_scan_classifier.io.nifti import load_nifti
from napari_scan_classifier.plugin.layers import layer_to_volume, volume_to_layer_data
from napari_scan_classifier.volume import Volume

PLUGIN = "napari-scan-classifier"
# Axial, tilted 18 degrees about L: data axes already follow the world axes.
AXIAL_TILTED = [[-2.5, 0.0, 0.0, 110.0], [0.0, 0.9, -0.3, -20.0], [0.0, 0.3, 0.9, -30.0]]
# Sagittal: napari is handed a transposed view, so the file stores another axis order.
SAGITTAL = [[0.0, 0.0, -2.5, 110.0], [0.3, 0.9, 0.0, -20.0], [0.9, -0.3, 0.0, -30.0]]

pytestmark = pytest.mark.filterwarnings("ignore:Non-orthogonal slicing")  # the tilt, on purpose


def _ct(rows: list[list[float]]) -> Volume:
    voxels = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) * 10 - 500
    affine = np.vstack([rows, [0, 0, 0, 1]])
    return Volume(voxels, affine, modality="CT", metadata={"series_description": "Chest"})


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_image_layer_round_trip(viewer: ViewerModel, tmp_path: Path, suffix: str) -> None:
    volume = _ct(AXIAL_TILTED)
    data, meta, _ = volume_to_layer_data(volume)
    viewer.add_image(data, **meta)
    path = tmp_path / f"scan{suffix}"

    written = viewer.layers.save(str(path), plugin=PLUGIN)

    assert written == [str(path)]
    back = load_nifti(path)
    np.testing.assert_array_equal(back.voxels, volume.voxels)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-5)
    assert back.modality == "CT"


def test_sagittal_image_round_trip(viewer: ViewerModel, tmp_path: Path) -> None:
    volume = _ct(SAGITTAL)
    data, meta, _ = volume_to_layer_data(volume)
    viewer.add_image(data, **meta)

    (written,) = viewer.layers.save(str(tmp_path / "scan.nii.gz"), plugin=PLUGIN)

    assert_same_scan(load_nifti(written), volume)


def test_labels_layer_keeps_the_geometry_it_is_shown_with(
    viewer: ViewerModel, tmp_path: Path
) -> None:
    data, meta, _ = volume_to_layer_data(_ct(SAGITTAL))
    image = viewer.add_image(data, **meta)
    labels = viewer.add_labels(np.zeros(data.shape, np.uint8), affine=image.affine)
    labels.data[1, 2, 3] = 7
    path = tmp_path / "mask.nii.gz"

    viewer.layers.selection = {labels}
    viewer.layers.save(str(path), selected=True, plugin=PLUGIN)

    back = load_nifti(path)
    assert back.modality == "SEG"
    assert_same_scan(back, layer_to_volume(labels))
    (index,) = np.argwhere(back.voxels)
    np.testing.assert_allclose(back.index_to_world(index)[0], labels.data_to_world((1, 2, 3)))
