"""Dock helpers shared by the annotate and train widgets: matplotlib figures sized for a dock,
live training curves, and the plumbing that runs a core job in a worker thread.

Figures are made without pyplot (no global state, no window of their own) and drawn through
``FigureCanvasQTAgg`` inside the dock, which follows the dock's width. Jobs run in a napari
``thread_worker``; the core reports progress through a callback, which :class:`Relay` carries
to the Qt thread; errors the user can act on become one line in napari's notifications.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QSizePolicy
from superqt.utils import FunctionWorker

from napari_scan_classifier.errors import CancelledError, ScanClassifierError

MIN_WIDTH = 220  # px
PLOT_HEIGHT = 280  # px
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


def figure_canvas(figure: Figure, height: int) -> FigureCanvasQTAgg:
    """A canvas for ``figure`` as wide as the dock and ``height`` pixels tall.

    The width policy is Ignored: the figure's own size would otherwise set the dock's minimum.
    """
    canvas = FigureCanvasQTAgg(figure)
    canvas.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
    canvas.setMinimumWidth(MIN_WIDTH)
    canvas.setFixedHeight(height)
    return canvas


class TrainingCurves:
    """Loss (train and validation) and validation AUC per epoch, redrawn as epochs finish."""

    def __init__(self, text_color: str) -> None:
        self.figure = Figure(figsize=(3.2, 2.6), layout="constrained")
        self.figure.patch.set_alpha(0.0)
        self.loss_axes, self.auc_axes = self.figure.subplots(2, 1, sharex=True)
        self.canvas = figure_canvas(self.figure, PLOT_HEIGHT)
        self.canvas.setStyleSheet("background-color: transparent;")
        self._color = text_color
        self.show({}, 1)

    def show(self, history: dict[str, Sequence[float]], epochs: int) -> None:
        """Draw ``history`` ({"loss": [...], "val_loss": [...], "val_auc": [...]}) on an epoch
        axis as long as the planned ``epochs``, so the user sees how far training has come."""
        self.loss_axes.clear()
        self.auc_axes.clear()
        for key, label in LOSS_LINES:
            values = history.get(key, [])
            self.loss_axes.plot(range(1, len(values) + 1), values, marker=".", label=label)
        auc = history.get("val_auc", [])
        self.auc_axes.plot(range(1, len(auc) + 1), auc, marker=".", color="tab:green")
        self.loss_axes.set_title("loss", fontsize=9, color=self._color)
        self.auc_axes.set_title("validation AUC", fontsize=9, color=self._color)
        self.auc_axes.set_ylim(0, 1.02)
        self.auc_axes.set_xlim(0.5, epochs + 0.5)
        self.auc_axes.set_xlabel("epoch", fontsize=8, color=self._color)
        self.auc_axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        self.loss_axes.legend(fontsize=7, frameon=False, labelcolor=self._color)
        for axes in (self.loss_axes, self.auc_axes):
            axes.set_facecolor("none")
            axes.tick_params(colors=self._color, labelsize=8)
            for spine in axes.spines.values():
                spine.set_color(self._color)
        self.canvas.draw_idle()
