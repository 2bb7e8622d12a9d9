"""The Display widget's presets set exactly the window they name on the selected image layer."""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import ViewerModel
from napari.layers import Image
from napari.utils.notifications import Notification
from qtpy.QtCore import Qt

from napari_scan_classifier.plugin.layers import (
    map_to_layer_data,
    put_result_layer,
    volume_to_layer_data,
)
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

    assert "Select a scan" in notifications[-1].message


def _saliency_of(viewer: ViewerModel, scan: Image) -> Image:
    volume = Volume(np.linspace(0, 1, 60).reshape(3, 4, 5).astype(np.float32), np.eye(4))
    layer_data = map_to_layer_data(volume, volume.voxels, "Grad-CAM · lesion", {})
    return put_result_layer(viewer.layers, scan, "saliency", layer_data)


@pytest.mark.parametrize("selected", ["saliency", "mask"])
def test_presets_go_to_the_scan_a_map_or_mask_belongs_to(
    viewer: ViewerModel, selected: str
) -> None:
    """A lung window on a 0-1 heat map would wash it out: the scan gets it instead."""
    other = _ct_layer(viewer)
    other.name = "other scan"
    other.affine = np.diag([2.0, 2.0, 2.0, 1.0])  # another grid: not the mask's scan
    scan = _ct_layer(viewer)
    scan.name = "chest"
    if selected == "saliency":
        layer = _saliency_of(viewer, scan)
    else:
        layer = viewer.add_labels(np.zeros((3, 4, 5), dtype=np.uint8), affine=np.eye(4))
    before = tuple(layer.contrast_limits) if selected == "saliency" else None
    other_before = tuple(other.contrast_limits)
    viewer.layers.selection.active = layer
    widget = DisplayWidget(viewer)

    changed = widget.apply("lung")

    assert changed is scan and tuple(scan.contrast_limits) == EXPECTED["lung"]
    assert tuple(other.contrast_limits) == other_before
    if before is not None:
        assert tuple(layer.contrast_limits) == before == (0.0, 1.0)
    assert widget.status.value == "Window 1500 / -600 set on 'chest'."


def test_a_layer_of_no_scan_gets_no_window(
    viewer: ViewerModel, notifications: list[Notification]
) -> None:
    scan = _ct_layer(viewer)
    before = tuple(scan.contrast_limits)
    rgb = viewer.add_image(np.zeros((4, 5, 3), dtype=np.uint8), rgb=True)
    viewer.layers.selection.active = rgb

    assert DisplayWidget(viewer).apply("bone") is None

    assert tuple(scan.contrast_limits) == before and tuple(rgb.contrast_limits) == (0, 255)
    assert "Select a scan" in notifications[-1].message


def test_widget_docks_from_the_manifest(make_napari_viewer) -> None:
    viewer = make_napari_viewer()

    _, widget = viewer.window.add_plugin_dock_widget("napari-scan-classifier", "Display")

    assert isinstance(widget, DisplayWidget)


def test_open_reads_in_a_worker_and_adds_the_readers_layer(
    viewer: ViewerModel, qtbot, ct_series
) -> None:
    widget = DisplayWidget(viewer)
    (expected,) = viewer.open(str(ct_series.folder), plugin="napari-scan-classifier")
    viewer.layers.clear()

    assert widget.open(ct_series.folder) is not None
    assert not widget.open_folder_button.enabled and widget.cancel_button.enabled
    qtbot.waitUntil(lambda: widget.worker is None, timeout=30_000)

    (layer,) = viewer.layers
    assert layer.name == expected.name
    np.testing.assert_array_equal(layer.data, expected.data)
    np.testing.assert_allclose(layer.affine.affine_matrix, expected.affine.affine_matrix)
    assert widget.open_folder_button.enabled and not widget.cancel_button.enabled


def test_cancelled_open_adds_nothing(
    viewer: ViewerModel, qtbot, ct_series, notifications: list[Notification]
) -> None:
    widget = DisplayWidget(viewer)
    # The first report cancels from inside the reader's thread, before it reads on: a queued
    # cancel could arrive after a small series is already read.
    widget._relay.received.connect(
        lambda _: widget._cancel.set(), Qt.ConnectionType.DirectConnection
    )
    widget._relay.received.connect(lambda _: widget.cancel())  # the button, on the Qt thread

    widget.open(ct_series.folder)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=30_000)

    assert len(viewer.layers) == 0
    assert "cancel" in notifications[-1].message.lower()
