"""The Display widget's presets set exactly the window they name on the selected image layer."""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import ViewerModel
from napari.layers import Image
from napari.utils.notifications import Notification

from napari_scan_classifier.plugin.layers import volume_to_layer_data
from napari_scan_classifier.plugin.widgets.display import FROM_FILE, DisplayWidget
from napari_scan_classifier.volume import Volume

EXPECTED = {
    "brain": (0.0, 80.0),
    "soft tissue": (-160.0, 240.0),
    "lung": (-1350.0, 150.0),
    "bone": (-500.0, 1300.0),
    FROM_FILE: (-125.0, 225.0),  # W350 / L50 stored in the header
}


def _ct_layer(viewer: ViewerModel, **metadata: object) -> Image:
    voxels = np.linspace(-1000, 1500, 60).reshape(3, 4, 5).astype(np.int16)
    volume = Volume(voxels, np.eye(4), modality="CT", metadata=metadata)
    data, meta, _ = volume_to_layer_data(volume)
    return viewer.add_image(data, **meta)


@pytest.mark.parametrize("preset", list(EXPECTED))
def test_preset_sets_contrast_limits(viewer: ViewerModel, preset: str) -> None:
    layer = _ct_layer(viewer, window_center=50.0, window_width=350.0)
    widget = DisplayWidget(viewer)

    widget[preset.replace(" ", "_")].clicked.emit()

    assert tuple(layer.contrast_limits) == EXPECTED[preset]


def test_from_file_without_window_leaves_contrast(
    viewer: ViewerModel, notifications: list[Notification]
) -> None:
    layer = _ct_layer(viewer)
    before = tuple(layer.contrast_limits)

    DisplayWidget(viewer).apply(FROM_FILE)

    assert tuple(layer.contrast_limits) == before
    assert "no window" in notifications[-1].message


def test_no_image_selected_is_explained(
    viewer: ViewerModel, notifications: list[Notification]
) -> None:
    viewer.add_points([[0, 0, 0]])

    DisplayWidget(viewer).apply("lung")

    assert "Select an image layer" in notifications[-1].message


def test_widget_docks_from_the_manifest(make_napari_viewer) -> None:
    viewer = make_napari_viewer()

    _, widget = viewer.window.add_plugin_dock_widget("napari-scan-classifier", "Display")

    assert isinstance(widget, DisplayWidget)
