"""The Classify dock's chart: class probabilities with their spread, and per-slice scores.

Drawn in the background like the training curves (:class:`.plots.Painter`): laying out and
drawing the figure took 40-100 ms on the Qt thread of a 2-core machine, after every
classification and again at every step of the slice slider (the cursor moves).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from napari_scan_classifier.plugin.widgets.plots import FigureImage, Painter, theme_figure
from napari_scan_classifier.results import ood_lines

BAR_PX, AXES_PX, SLICES_PX = 28, 60, 150  # chart heights: per class bar, titles, slice plot
OOD_BAR_COLOR = "#8a8f93"
CURSOR_GID = "cursor"


class ResultChart:
    """Class probabilities as bars with ± SD error bars; below, where the model scores slices,
    the per-slice probabilities with a cursor at the slice on screen. ``figure`` is the latest
    one drawn; :meth:`up_to_date` says whether it shows the latest request."""

    def __init__(self, text_color: str) -> None:
        self.canvas = FigureImage(AXES_PX)
        self.figure: Figure | None = None
        self._color = text_color
        self._result: dict[str, Any] | None = None
        self._slice: int | None = None
        self._requests = itertools.count()
        self._latest = ""
        self._painter = Painter()
        self._painter.drawn.connect(self._on_drawn)
        self.show(None)

    def show(self, result: dict[str, Any] | None) -> None:
        self._result, self._slice = result, None
        self.canvas.setVisible(result is not None)
        if result is None:
            self._latest, self.figure = "", None
            return
        self.canvas.setFixedHeight(sum(_heights(result)))
        self._request()

    def move_cursor(self, k: int | None) -> None:
        if self._result is None or not self._result.get("per_slice") or k == self._slice:
            return
        self._slice = k
        self._request()

    def up_to_date(self) -> bool:
        return self._result is None or (
            self.figure is not None and self.figure.get_label() == self._latest
        )

    def _request(self) -> None:
        result, k, color = self._result, self._slice, self._color
        label = self._latest = str(next(self._requests))

        def make() -> Figure:
            figure = chart_figure(result, k, color)
            figure.set_label(label)
            return figure

        self._painter.request(make, self.canvas.render_width(), sum(_heights(result)))

    def _on_drawn(self, figure: Figure, rgba: np.ndarray) -> None:
        if figure.get_label() != self._latest:  # a drawing overtaken by a newer request
            return
        self.figure = figure
        try:
            self.canvas.show_rgba(rgba)
        except RuntimeError:  # the dock was closed while the figure was being drawn
            self._painter.drawn.disconnect(self._on_drawn)


def chart_figure(result: dict[str, Any], k: int | None, color: str) -> Figure:
    """The chart of ``result`` with the cursor at slice ``k`` (0-based; None: no cursor)."""
    figure = Figure(layout="constrained")
    per_slice = result.get("per_slice")
    heights = _heights(result)
    grid = figure.add_gridspec(len(heights), 1, height_ratios=heights)
    _bars(figure.add_subplot(grid[0]), result, color)
    if per_slice:
        _slices(figure.add_subplot(grid[1]), per_slice, k)
    for axes in figure.axes:
        axes.tick_params(labelsize=8)
    return theme_figure(figure, color)


def _heights(result: dict[str, Any]) -> list[int]:
    bars = BAR_PX * len(result["probabilities"]) + AXES_PX
    return [bars, SLICES_PX] if result.get("per_slice") else [bars]


def _bars(axes: Any, result: dict[str, Any], color: str) -> None:
    names = list(result["probabilities"])
    values = [result["probabilities"][n] for n in names]
    errors = [result["uncertainty"]["std"][n] for n in names]
    colors = ["#4560c4" if n == result["predicted_class"] else "#61696e" for n in names]
    title = "p(class) ± SD"
    alpha = 1.0
    if ood_lines(result):  # shown, but greyed: the model is outside what it was trained on
        colors, alpha = [OOD_BAR_COLOR] * len(names), 0.45
        title = "p(class) ± SD: out of distribution, not reliable"
    positions = np.arange(len(names))[::-1]
    axes.barh(positions, values, xerr=errors, color=colors, alpha=alpha, ecolor=color, capsize=4)
    for y, p, e in zip(positions, values, errors, strict=True):
        axes.text(1.02, y, f"{p:.2f} ± {e:.2f}", va="center", color=color, fontsize=8)
    axes.set_yticks(positions, names)
    axes.set_xlim(0, 1.35)
    axes.set_xticks([0, 0.5, 1])
    axes.set_title(title, fontsize=9)


def _slices(axes: Any, per_slice: dict[str, list[float | None]], k: int | None) -> None:
    for name, values in per_slice.items():
        scores = np.array([np.nan if v is None else v for v in values], dtype=float)
        axes.plot(np.arange(1, scores.size + 1), scores, label=name, linewidth=1.2)
    axes.set_ylim(0, 1)
    axes.set_xlabel("slice (as acquired)", fontsize=8)
    axes.legend(fontsize=7, frameon=False)
    if k is not None:
        axes.axvline(k + 1, color="#e3b617", linewidth=1, gid=CURSOR_GID)
