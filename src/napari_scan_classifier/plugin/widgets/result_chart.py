"""The Classify dock's chart: class probabilities with their spread, and per-slice scores."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtWidgets import QSizePolicy

from napari_scan_classifier.results import ood_lines

MIN_CHART_WIDTH = 220  # px
BAR_PX, AXES_PX, SLICES_PX = 28, 60, 150  # chart heights: per class bar, titles, slice plot
OOD_BAR_COLOR = "#8a8f93"


class ResultChart:
    """Class probabilities as bars with ± SD error bars; below, where the model scores slices,
    the per-slice probabilities with a cursor at the slice on screen."""

    def __init__(self, text_color: str) -> None:
        self.figure = Figure(layout="constrained")
        self.figure.patch.set_alpha(0.0)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setStyleSheet("background-color: transparent;")
        # Follow the dock's width; the figure's own size would otherwise set the dock's minimum.
        self.canvas.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.canvas.setMinimumWidth(MIN_CHART_WIDTH)
        self._color = text_color
        self._cursor: Any = None
        self.show(None)

    def show(self, result: dict[str, Any] | None) -> None:
        self.figure.clear()
        self._cursor = None
        self.canvas.setVisible(result is not None)
        if result is None:
            return
        per_slice = result.get("per_slice")
        bars = BAR_PX * len(result["probabilities"]) + AXES_PX
        heights = [bars, SLICES_PX] if per_slice else [bars]
        grid = self.figure.add_gridspec(len(heights), 1, height_ratios=heights)
        self._bars(self.figure.add_subplot(grid[0]), result)
        if per_slice:
            self._slices(self.figure.add_subplot(grid[1]), per_slice)
        self.canvas.setFixedHeight(sum(heights))
        self.canvas.draw_idle()

    def move_cursor(self, k: int | None) -> None:
        if self._cursor is None:
            return
        self._cursor.set_visible(k is not None)
        if k is not None:
            self._cursor.set_xdata([k + 1, k + 1])
        self.canvas.draw_idle()

    def _bars(self, axes: Any, result: dict[str, Any]) -> None:
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
        axes.barh(
            positions, values, xerr=errors, color=colors, alpha=alpha, ecolor=self._color, capsize=4
        )
        for y, p, e in zip(positions, values, errors, strict=True):
            axes.text(1.02, y, f"{p:.2f} ± {e:.2f}", va="center", color=self._color, fontsize=8)
        axes.set_yticks(positions, names)
        axes.set_xlim(0, 1.35)
        axes.set_xticks([0, 0.5, 1])
        axes.set_title(title, fontsize=9, color=self._color)
        self._style(axes)

    def _slices(self, axes: Any, per_slice: dict[str, list[float | None]]) -> None:
        for name, values in per_slice.items():
            scores = np.array([np.nan if v is None else v for v in values], dtype=float)
            axes.plot(np.arange(1, scores.size + 1), scores, label=name, linewidth=1.2)
        axes.set_ylim(0, 1)
        axes.set_xlabel("slice (as acquired)", fontsize=8, color=self._color)
        axes.legend(fontsize=7, frameon=False, labelcolor=self._color)
        self._cursor = axes.axvline(1, color="#e3b617", linewidth=1)
        self._style(axes)

    def _style(self, axes: Any) -> None:
        axes.set_facecolor("none")
        axes.tick_params(colors=self._color, labelsize=8)
        for spine in axes.spines.values():
            spine.set_color(self._color)
