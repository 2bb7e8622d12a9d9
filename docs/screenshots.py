"""Make the README's pictures from a real napari window (under Xvfb when there is no display).

1. ``demo.png``: the demo, the sample CT classified by the bundled model, its saliency map over
   the anatomy, on the slice through the largest lesion;
2. ``annotate.png``: the Annotate dock after the scan was saved as a labelled case with a mask;
3. ``train.png``: the Train dock after a short training run, with its curves;
4. ``mr_demo.png``: the sample brain MR with a tumour, classified by the model the scan chose
   (``demo_mr_brain``), its saliency map over the slice through the tumour.

    python docs/screenshots.py [--out docs/images] [--width 1100]

The training run uses generated phantom cases in a temporary library and saves its model in a
temporary folder: nothing of yours is touched.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

SCREEN = (1600, 1000)
COLOURS = 96  # a palette PNG: the pictures stay small


def _wait(condition: Callable[[], bool], limit_s: float = 600.0, settle_s: float = 1.0) -> None:
    """Run the event loop until ``condition()``, then ``settle_s`` more (paints, layouts)."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the window did not get there in time")
        app.processEvents()
        time.sleep(0.02)
    end = time.monotonic() + settle_s
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def _save(viewer, path: Path, width: int) -> Path:
    """The whole window, scaled to ``width`` pixels, as a palette PNG."""
    from PIL import Image
    from qtpy.QtCore import QBuffer, QIODevice, Qt

    pixmap = viewer.window._qt_window.grab()
    pixmap = pixmap.scaledToWidth(width, Qt.TransformationMode.SmoothTransformation)
    buffer = QBuffer()
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    pixmap.save(buffer, "PNG")
    image = Image.open(io.BytesIO(bytes(buffer.data()))).convert("RGB")
    image.quantize(COLOURS, dither=Image.Dither.NONE).save(path, optimize=True)
    print(f"{path}: {path.stat().st_size // 1024} KB")
    return path


def _library(root: Path) -> Path:
    from napari_scan_classifier.cases import CaseLibrary
    from napari_scan_classifier.phantoms import make_case

    library = CaseLibrary(root)
    for seed in range(16):
        label = ("normal", "lesion")[seed % 2]
        library.add(make_case(seed, seed % 2, shape=(48, 48, 48)).volume, label)
    return root


def make_pictures(out: Path, width: int) -> list[Path]:
    import numpy as np
    from napari.settings import get_settings

    from napari_scan_classifier.plugin.demo import (
        CLASSIFY_DOCK,
        largest_lesion_mm,
        open_demo_viewer,
    )
    from napari_scan_classifier.plugin.widgets.annotate import AnnotateWidget
    from napari_scan_classifier.plugin.widgets.train import TrainWidget

    # No toasts over the pictures; main() points napari at a throwaway settings file for this.
    get_settings().application.gui_notification_level = "error"
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="scan-classifier-screenshots-"))
    viewer = open_demo_viewer(show=True, classify=True)
    viewer.window._qt_window.resize(*SCREEN)
    classify = viewer.window.dock_widgets[CLASSIFY_DOCK]
    _wait(lambda: classify.worker is None and classify.chart.up_to_date(), settle_s=2.0)
    pictures = [_save(viewer, out / "demo.png", width)]

    annotate = AnnotateWidget(viewer)
    annotate.library.value = _library(work / "cases")
    viewer.window.add_dock_widget(annotate, name="Annotate", area="right", tabify=True)
    scan = viewer.layers[0]
    viewer.layers.selection.active = scan
    annotate.class_label.value = "lesion"
    annotate.add_mask()
    mask = viewer.layers[-1]
    centre = np.array([round(float(v)) for v in mask.world_to_data(largest_lesion_mm())])
    rows, cols = np.ogrid[: mask.data.shape[1], : mask.data.shape[2]]
    disc = (rows - centre[1]) ** 2 + (cols - centre[2]) ** 2 <= 7**2  # a painted stroke
    mask.data[centre[0]][disc] = 1
    mask.refresh()
    viewer.layers.selection.active = scan
    annotate.save_case()
    _wait(lambda: annotate.worker is None, settle_s=6.0)  # the "saved" notice fades
    pictures.append(_save(viewer, out / "annotate.png", width))

    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train, name="Train model", area="right", tabify=True)
    train.library.value = work / "cases"
    train.out.value = work / "models"
    train.epochs.value = 4
    train.batch_size.value = 4
    train.validation.value = 0.3
    train.start()
    _wait(lambda: train.worker is None, settle_s=1.0)
    train.plots.setCurrentIndex(0)
    _wait(lambda: True, settle_s=2.0)
    pictures.append(_save(viewer, out / "train.png", width))
    viewer.close()
    pictures.append(mr_picture(out, width))
    return pictures


def mr_picture(out: Path, width: int) -> Path:
    """The sample brain MR with a tumour, classified with the model chosen for it."""
    import napari

    from napari_scan_classifier.phantoms import sample_mr_phantom
    from napari_scan_classifier.plugin.demo import CLASSIFY_DOCK, PLUGIN, fit_view
    from napari_scan_classifier.plugin.layout import fit_window
    from napari_scan_classifier.plugin.widgets.classify import ClassifyWidget

    viewer = napari.Viewer(title="napari-scan-classifier: brain MR", show=True)
    fit_window(viewer)
    viewer.window._qt_window.resize(*SCREEN)
    viewer.open_sample(PLUGIN, "phantom_mr")
    classify = ClassifyWidget(viewer)
    viewer.window.add_dock_widget(classify, name=CLASSIFY_DOCK, area="right")
    fit_view(viewer)
    classify.classify()
    _wait(lambda: classify.worker is None and classify.chart.up_to_date(), settle_s=2.0)
    classify.go_to_salient_slice()
    (tumour,) = sample_mr_phantom().volume.metadata["phantom_lesions"]
    viewer.dims.set_point(range(viewer.dims.ndim - 3, viewer.dims.ndim), tumour["centre_mm"])
    viewer.reset_view()
    _wait(lambda: True, settle_s=2.0)
    picture = _save(viewer, out / "mr_demo.png", width)
    viewer.close()
    return picture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "images")
    parser.add_argument("--width", type=int, default=1100, help="picture width in pixels")
    args = parser.parse_args()
    settings = Path(tempfile.mkdtemp(prefix="napari-settings-")) / "settings.yaml"
    os.environ["NAPARI_CONFIG"] = str(settings)  # before napari loads: yours stay as they are
    if os.environ.get("DISPLAY"):
        make_pictures(args.out, args.width)
        return
    from pyvirtualdisplay import Display

    with Display(visible=False, size=SCREEN):
        os.environ["QT_QPA_PLATFORM"] = "xcb"
        make_pictures(args.out, args.width)


if __name__ == "__main__":
    main()
