"""Dock helpers shared by the annotate and train widgets: matplotlib figures sized for a dock,
live training curves, and the plumbing that runs a core job in a worker thread.

Figures are made without pyplot (no global state, no window of their own), styled for napari's
theme and drawn to pixels in a background thread; the dock only shows the pixels, so drawing a
plot never stalls the viewer. Jobs run in a napari
``thread_worker``; the core reports progress through a callback, which :class:`Relay` carries
to the Qt thread; errors the user can act on become one line in napari's notifications.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QLabel, QSizePolicy
from superqt.utils import FunctionWorker

from napari_scan_classifier.errors import CancelledError, ScanClassifierError

MIN_WIDTH = 220  # px
PLOT_HEIGHT = 280  # px
DPI = 100
LOSS_LINES = (("loss", "train loss"), ("val_loss", "validation loss"))

T = TypeVar("T")


class Relay(QObject):
    """Carries a worker thread's progress reports to the Qt thread (a queued signal).

    The core reports through a callback: pass ``relay.report`` and connect ``relay.received``.
    """

    received = Signal(object)

    def report(self, *values: Any) -> None:
        """The callback for the core: one value arrives as itself, several as a tuple."""
        self.received.emit(values[0] if len(values) == 1 else values)


@thread_worker(worker_class=FunctionWorker, ignore_errors=True)
def run_in_thread(job: Callable[[], T]) -> T:
    """Run ``job`` in a worker thread (call ``.start()`` on the returned worker).

    superqt's FunctionWorker, not napari's: napari's would also show every error with its
    traceback, and the widgets report the ones the user can act on as one clear line.
    """
    return job()


def notify_error(error: BaseException, job: str) -> None:
    """Tell the user why ``job`` stopped: one line for what they can act on, else re-raise."""
    if isinstance(error, CancelledError):  # the core says what was cancelled and what is kept
        message = str(error) or f"{job} was cancelled"
        show_info(f"{message[:1].upper()}{message[1:]}.")
    elif isinstance(error, ScanClassifierError):
        show_error(str(error))
    else:  # a bug, not the user's input: keep the traceback for the report
        show_error(f"{job} failed unexpectedly: {type(error).__name__}: {error}")
        raise error


def theme_figure(figure: Figure, color: str) -> Figure:
    """``figure`` (made for a white page) restyled for napari's theme: a transparent background
    and text, ticks and frames in the theme's text colour (coloured data stays as it is)."""
    figure.patch.set_alpha(0.0)
    in_data = {id(text) for axes in figure.axes for text in axes.texts}  # e.g. matrix counts
    for text in figure.findobj(Text):
        if id(text) not in in_data and to_hex(text.get_color()) == "#000000":
            text.set_color(color)
    for axes in figure.axes:
        axes.set_facecolor("none")
        axes.tick_params(colors=color, which="both")
        for spine in axes.spines.values():
            spine.set_color(color)
        axes.xaxis.label.set_color(color)
        axes.yaxis.label.set_color(color)
        axes.title.set_color(color)
        legend = axes.get_legend()
        if legend is not None:
            legend.get_frame().set_alpha(0.0)
            for text in legend.get_texts():
                text.set_color(color)
    return figure


def render_rgba(figure: Figure, width: int, height: int) -> np.ndarray:
    """``figure`` drawn at ``width`` x ``height`` pixels as an RGBA array. Any thread may call it
    (Agg, no pyplot), so a worker draws and the Qt thread only shows the pixels."""
    figure.set_size_inches(width / DPI, height / DPI)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


class FigureImage(QLabel):
    """Shows pixels a worker drew (:func:`render_rgba`): the Qt thread never lays out or draws a
    matplotlib figure, which takes 0.1-1.5 s on a busy two-core machine."""

    def __init__(self, height: int = PLOT_HEIGHT) -> None:
        super().__init__()
        self.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.setMinimumWidth(MIN_WIDTH)
        self.setFixedHeight(height)
        self.rgba: np.ndarray | None = None

    def show_rgba(self, rgba: np.ndarray) -> None:
        self.rgba = rgba
        height, width = rgba.shape[:2]
        image = QImage(rgba.data, width, height, 4 * width, QImage.Format.Format_RGBA8888)
        self.setPixmap(QPixmap.fromImage(image))

    def render_width(self) -> int:
        """The width to draw at: the label's, once the dock has laid it out."""
        return max(self.width(), MIN_WIDTH)


class Painter(QObject):
    """Draws figures in one background thread, newest request first; ``drawn`` carries each
    (figure, RGBA) back to the Qt thread. Requests made while one is drawing replace each
    other, so a fast stream of epochs never queues up stale drawings."""

    drawn = Signal(object, object)

    def __init__(self) -> None:
        super().__init__()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="scan-classifier-plots")
        self._lock = threading.Lock()
        self._pending: tuple[Callable[[], Figure], int, int] | None = None
        self._busy = False

    def request(self, make: Callable[[], Figure], width: int, height: int) -> None:
        """Draw the figure ``make()`` builds (called in the background thread)."""
        with self._lock:
            self._pending = (make, width, height)
            if self._busy:
                return
            self._busy = True
        self._pool.submit(self._drain)

    def _drain(self) -> None:
        while True:
            with self._lock:
                if self._pending is None:
                    self._busy = False
                    return
                (make, width, height), self._pending = self._pending, None
            figure = make()
            self.drawn.emit(figure, render_rgba(figure, width, height))


class TrainingCurves:
    """Loss (train and validation) and validation AUC per epoch, redrawn as epochs finish, in a
    background thread (:class:`Painter`); ``figure`` is the latest one shown."""

    def __init__(self, text_color: str) -> None:
        self.canvas = FigureImage(PLOT_HEIGHT)
        self.figure: Figure | None = None
        self._color = text_color
        self._painter = Painter()
        self._painter.drawn.connect(self._on_drawn)
        self.show({}, 1)

    def show(self, history: dict[str, Sequence[float]], epochs: int) -> None:
        """Draw ``history`` ({"loss": [...], "val_loss": [...], "val_auc": [...]}) on an epoch
        axis as long as the planned ``epochs``, so the user sees how far training has come."""
        snapshot = {key: list(values) for key, values in history.items()}
        draw = lambda: curves_figure(snapshot, epochs, self._color)  # noqa: E731
        self._painter.request(draw, self.canvas.render_width(), PLOT_HEIGHT)

    def _on_drawn(self, figure: Figure, rgba: np.ndarray) -> None:
        self.figure = figure
        try:
            self.canvas.show_rgba(rgba)
        except RuntimeError:  # the dock was closed while the figure was being drawn
            self._painter.drawn.disconnect(self._on_drawn)

    @property
    def loss_axes(self) -> Any:
        return None if self.figure is None else self.figure.axes[0]

    @property
    def auc_axes(self) -> Any:
        return None if self.figure is None else self.figure.axes[1]


def curves_figure(history: dict[str, Sequence[float]], epochs: int, color: str) -> Figure:
    """Loss and validation AUC per epoch, in ``color`` on a transparent background."""
    figure = Figure(figsize=(3.2, 2.6), layout="constrained")
    loss_axes, auc_axes = figure.subplots(2, 1, sharex=True)
    for key, label in LOSS_LINES:
        values = history.get(key, [])
        loss_axes.plot(range(1, len(values) + 1), values, marker=".", label=label)
    auc = history.get("val_auc", [])
    auc_axes.plot(range(1, len(auc) + 1), auc, marker=".", color="tab:green")
    loss_axes.set_title("loss", fontsize=9)
    auc_axes.set_title("validation AUC", fontsize=9)
    auc_axes.set_ylim(0, 1.02)
    auc_axes.set_xlim(0.5, epochs + 0.5)
    auc_axes.set_xlabel("epoch", fontsize=8)
    auc_axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_axes.legend(fontsize=7, frameon=False)
    for axes in (loss_axes, auc_axes):
        axes.tick_params(labelsize=8)
    return theme_figure(figure, color)
