"""``napari-scan-classifier demo``: napari on the sample CT series, classified and overlaid."""

from __future__ import annotations

import napari

from napari_scan_classifier.plugin.widgets.classify import ClassifyWidget
from napari_scan_classifier.plugin.widgets.display import DisplayWidget

PLUGIN = "napari-scan-classifier"
CLASSIFY_DOCK = "Classify scan"


def open_demo_viewer(
    show: bool = True, *, classify: bool = False, model: str | None = None
) -> napari.Viewer:
    """A viewer holding the sample CT series with the plugin's widgets docked; with ``classify``
    the classification starts at once (in a worker: the window stays live), with ``model`` (a
    bundle path) instead of the bundled model."""
    viewer = napari.Viewer(title="napari-scan-classifier demo", show=show)
    viewer.open_sample(PLUGIN, "phantom_ct")
    viewer.window.add_dock_widget(DisplayWidget(viewer), name="Display", area="right")
    widget = ClassifyWidget(viewer)
    if model:
        widget.model.value = model
    viewer.window.add_dock_widget(widget, name=CLASSIFY_DOCK, area="right", tabify=True)
    if classify:
        widget.classify()
    return viewer


def run_demo(model: str | None = None) -> int:
    """Open the demo window, classify the sample, and run napari until the user closes it."""
    open_demo_viewer(classify=True, model=model)
    napari.run()
    return 0
