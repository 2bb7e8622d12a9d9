"""The "Display" dock widget: open a scan without freezing the viewer, and set a CT window on it.

Opening runs the reader in a worker thread with a progress bar and Cancel: decoding a 300-slice
series takes a second or more, which napari's File > Open spends in its own thread. Only adding
the finished layer happens in the Qt thread.

A window only makes sense on a scan's intensities, never on a saliency map, a probability map or
a mask (a lung window washes a 0-1 heat map out). So a preset goes to the selected layer when it
is a scan, else to the scan the selected layer belongs to (a result layer names its scan; a mask
lies on its scan's grid), and the dock says which layer it changed.
"""

from __future__ import annotations

import threading
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import Container, Label, PushButton
from napari.layers import Layer
from napari.utils.notifications import show_info
from qtpy.QtWidgets import QFileDialog
from superqt.utils import FunctionWorker

from napari_scan_classifier.plugin.layers import CT_WINDOWS, Window, dicom_window, scan_of
from napari_scan_classifier.plugin.layout import scroll_when_docked
from napari_scan_classifier.plugin.reader import load_layer_data, report_problems
from napari_scan_classifier.plugin.widgets.plots import Relay, notify_error, run_in_thread
from napari_scan_classifier.plugin.widgets.progress_bar import DockProgress

if TYPE_CHECKING:
    import napari
    from napari.layers import Image

FROM_FILE = "from file"


class DisplayWidget(Container):
    """CT window presets (width/level in HU) plus the window stored in the scan's DICOM header."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)
        self._viewer = viewer
        self._cancel = threading.Event()
        self.progress_bar = DockProgress()
        self._relay = Relay()
        self._relay.received.connect(self._on_progress)
        self.worker: FunctionWorker | None = None
        self.open_folder_button = PushButton(text="Open DICOM folder…")
        self.open_file_button = PushButton(text="Open file (NIfTI, DICOM)…")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.open_folder_button.changed.connect(lambda: self._ask(folder=True))
        self.open_file_button.changed.connect(lambda: self._ask(folder=False))
        self.cancel_button.changed.connect(self.cancel)
        opening = Container(
            widgets=[self.open_folder_button, self.open_file_button, self.cancel_button],
            labels=False,
        )
        opening.margins = (0, 0, 0, 0)
        self.append(opening)
        self.append(self.progress_bar)
        self.append(Label(value="CT window (width / level, HU)"))
        for name, window in CT_WINDOWS.items():
            self.append(
                self._button(f"{name.capitalize()}  {window.width:g} / {window.level:g}", name)
            )
        self.append(self._button("From file (DICOM window)", FROM_FILE))
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self.append(self.status)
        scroll_when_docked(self)

    def _ask(self, folder: bool) -> None:
        if folder:
            path = QFileDialog.getExistingDirectory(self.native, "Open a DICOM folder")
        else:
            path, _ = QFileDialog.getOpenFileName(self.native, "Open a scan")
        if path:
            self.open(path)

    def open(self, path: str | Path) -> FunctionWorker | None:
        """Read the scans under ``path`` in a worker thread (progress bar, Cancel) and add them
        as layers when done; returns the started worker (None while one runs)."""
        if self.worker is not None:
            return None
        self._cancel = threading.Event()
        job = partial(_read, str(path), self._relay.report, self._cancel.is_set)
        worker = run_in_thread(job)
        worker.returned.connect(self._add_layers)
        worker.errored.connect(lambda error: notify_error(error, "Opening the scan"))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.open_folder_button.enabled = self.open_file_button.enabled = False
        self.cancel_button.enabled = True
        self.progress_bar.start("Opening the scan")
        worker.start()
        return worker

    def cancel(self) -> None:
        """Stop reading at the next file; nothing is added."""
        self._cancel.set()
        self.cancel_button.enabled = False

    def _on_progress(self, report: tuple[int, int, str]) -> None:
        if self.progress_bar.running:  # not a report that arrived after the end
            done, total, _ = report
            self.progress_bar.update_to(done, total)

    def _add_layers(self, outcome: tuple[list[Any], list[str]]) -> None:
        layers, problems = outcome
        report_problems(len(layers), problems)
        for data, kwargs, layer_type in layers:
            self._viewer.layers.append(Layer.create(data, kwargs, layer_type))

    def _on_finished(self) -> None:
        self.worker = None
        self.open_folder_button.enabled = self.open_file_button.enabled = True
        self.cancel_button.enabled = False
        self.progress_bar.stop()

    def _button(self, text: str, preset: str) -> PushButton:
        button = PushButton(text=text, name=preset.replace(" ", "_"))
        button.changed.connect(lambda: self.apply(preset))
        return button

    def apply(self, preset: str) -> Image | None:
        """Set the contrast limits of the selected scan (or the scan the selected layer belongs
        to) to ``preset`` (a CT_WINDOWS key or FROM_FILE); returns the layer changed, or None
        after telling the user why nothing was."""
        active = self._viewer.layers.selection.active
        layer = scan_of(active, self._viewer.layers) if active is not None else None
        if layer is None:
            self.status.value = ""
            show_info("Select a scan (an image layer) to set its window.")
            return None
        window = self._window(layer, preset)
        if window is None:
            show_info(f"'{layer.name}' has no window stored in its DICOM header.")
            return None
        layer.contrast_limits = window.limits
        self.status.value = f"Window {window.width:g} / {window.level:g} set on '{layer.name}'."
        return layer

    @staticmethod
    def _window(layer: Image, preset: str) -> Window | None:
        if preset == FROM_FILE:
            return dicom_window(layer.metadata)
        return CT_WINDOWS[preset]


def _read(path: str, report: Any, cancelled: Any) -> tuple[list[Any], list[str]]:
    """In the worker: the layers of ``path`` and the problems to report. Also builds napari's
    unit registry (pint; 1 s on first use), which adding the first layer would otherwise
    build in the Qt thread."""
    import pint

    pint.get_application_registry().mm  # noqa: B018 (built on first attribute access)
    return load_layer_data(path, report, cancelled)
