"""``napari-scan-classifier demo``: napari on the sample CT series, classified and overlaid.

The first view tells the story at a glance: the whole body in view (fitted once the docks have
narrowed the canvas), the slice through the centre of the sample's largest lesion (known from
the phantom that made it: this model's coarse Grad-CAM peaks beside the lesions, not in them),
the saliency map visible over the anatomy and the prediction written on the canvas.
"""

from __future__ import annotations

import napari
from qtpy.QtCore import QTimer

from napari_scan_classifier.choice import is_auto
from napari_scan_classifier.phantoms import sample_ct_phantom
from napari_scan_classifier.plugin.layout import fit_window
from napari_scan_classifier.plugin.widgets.classify import ClassifyWidget
from napari_scan_classifier.plugin.widgets.display import DisplayWidget

PLUGIN = "napari-scan-classifier"
CLASSIFY_DOCK = "Classify scan"


def open_demo_viewer(
    show: bool = True, *, classify: bool = False, model: str | None = None
) -> napari.Viewer:
    """A viewer holding the sample CT series with the plugin's widgets docked; with ``classify``
    the classification starts at once (in a worker: the window stays live), with ``model`` (a
    bundle path) instead of the model the scan chooses. When it ends, the view moves to the largest
    lesion with the saliency map shown."""
    viewer = napari.Viewer(title="napari-scan-classifier demo", show=show)
    fit_window(viewer)
    viewer.open_sample(PLUGIN, "phantom_ct")
    viewer.window.add_dock_widget(DisplayWidget(viewer), name="Display", area="right")
    widget = ClassifyWidget(viewer)
    if model and not is_auto(model):
        widget.model.value = model
    viewer.window.add_dock_widget(widget, name=CLASSIFY_DOCK, area="right", tabify=True)
    widget.native.parent().raise_()  # the Classify tab in front
    fit_view(viewer)
    if classify:
        worker = widget.classify()
        if worker is not None:
            lesion = largest_lesion_mm()
            worker.finished.connect(lambda: _show_answer(viewer, widget, lesion))
    return viewer


def largest_lesion_mm() -> tuple[float, float, float]:
    """World mm (z, y, x) of the centre of the sample CT's largest lesion."""
    lesions = sample_ct_phantom().volume.metadata["phantom_lesions"]
    largest = max(lesions, key=lambda lesion: lesion["voxels"])
    return tuple(float(v) for v in largest["centre_mm"])  # type: ignore[return-value]


def fit_view(viewer: napari.Viewer) -> None:
    """Fit the whole scan in the canvas now and again once Qt has laid out the docks (which
    narrow the canvas after they are added)."""
    viewer.reset_view()
    QTimer.singleShot(0, viewer.reset_view)


def _show_answer(
    viewer: napari.Viewer, widget: ClassifyWidget, lesion: tuple[float, float, float]
) -> None:
    if widget.go_to_salient_slice() is not None:  # shows the map; then to the lesion
        viewer.dims.set_point(range(viewer.dims.ndim - 3, viewer.dims.ndim), lesion)
    viewer.reset_view()


def run_demo(model: str | None = None) -> int:
    """Open the demo window, classify the sample, and run napari until the user closes it."""
    open_demo_viewer(classify=True, model=model)
    napari.run()
    return 0
