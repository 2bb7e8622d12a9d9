"""Layout that fits a laptop: tall docks scroll, and the window suits the screen."""

from __future__ import annotations

import pytest
from qt_support import opengl_available

from napari_scan_classifier.plugin.layout import dock_scroll_area, window_size
from napari_scan_classifier.plugin.widgets.train import TrainWidget


@pytest.mark.parametrize(
    ("free", "expected"),
    [((1366, 728), (1256, 669)), ((1920, 1040), (1600, 956)), ((2560, 1400), (1600, 1000))],
    ids=["1366x768", "1920x1080", "1440p"],
)
def test_window_size_fits_the_screen(free: tuple[int, int], expected: tuple[int, int]) -> None:
    assert window_size(free) == expected


def test_a_dock_taller_than_the_window_scrolls(make_napari_viewer, qtbot) -> None:
    if not opengl_available():
        pytest.skip("napari's window needs OpenGL: run under Xvfb (pytest-xvfb)")
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1000, 500)  # napari's least
    widget = TrainWidget(viewer)
    widget.plots.setVisible(True)  # as once training has started: the curves below the form
    viewer.window.add_dock_widget(widget, name="Train model", area="right")

    qtbot.waitUntil(lambda: dock_scroll_area(widget) is not None)
    area = dock_scroll_area(widget)
    button = widget.use_button.native  # the last row, below the curves

    assert viewer.window.dock_widgets["Train model"] is widget  # napari still finds it
    qtbot.waitUntil(lambda: area.verticalScrollBar().maximum() > 0)  # once laid out
    area.verticalScrollBar().setValue(0)
    top = button.mapTo(area.viewport(), button.rect().topLeft()).y()
    assert top > area.viewport().height()  # below the fold, reachable only by scrolling
    area.ensureWidgetVisible(button)
    top = button.mapTo(area.viewport(), button.rect().topLeft()).y()
    assert 0 <= top < area.viewport().height()
