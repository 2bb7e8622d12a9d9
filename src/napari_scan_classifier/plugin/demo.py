"""``napari-scan-classifier demo``: napari opened on the sample CT series, ready to use."""

from __future__ import annotations

import napari

from napari_scan_classifier.plugin.widgets.display import DisplayWidget

PLUGIN = "napari-scan-classifier"


def open_demo_viewer(show: bool = True) -> napari.Viewer:
    """A viewer holding the sample CT series with the plugin's widgets docked."""
    viewer = napari.Viewer(title="napari-scan-classifier demo", show=show)
    viewer.open_sample(PLUGIN, "phantom_ct")
    viewer.window.add_dock_widget(DisplayWidget(viewer), name="Display", area="right")
    return viewer


def run_demo() -> int:
    """Open the demo window and run napari's event loop until the user closes it."""
    open_demo_viewer()
    napari.run()
    return 0
