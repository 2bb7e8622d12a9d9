"""Layout that fits a laptop: docks that scroll when taller than the window, and a window size
that suits the screen it opens on (1366x768 as well as 1920x1080)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import QApplication, QDockWidget, QFrame, QScrollArea

if TYPE_CHECKING:
    import napari
    from magicgui.widgets import Container

WINDOW_SHARE = 0.92  # of the screen's free area, at most:
MAX_WINDOW = (1600, 1000)  # px; larger screens get room for other windows


class _ScrollWhenDocked(QObject):
    """Puts a widget in a scroll area as soon as a dock takes it, so a tall dock scrolls
    instead of pushing its buttons off the screen. Whatever docks it (napari's plugin menu, the
    demo, a script) gets the same; napari still finds the magicgui widget inside."""

    def __init__(self, container: Container) -> None:
        super().__init__(container.native)
        self._container = container
        container.native.installEventFilter(self)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.ParentChange:
            QTimer.singleShot(0, self._wrap)
        elif event.type() == QEvent.Type.LayoutRequest:
            area = dock_scroll_area(self._container)
            if isinstance(area, _DockScrollArea):
                area.follow_width()
        return False

    def _wrap(self) -> None:
        native = self._container.native
        dock = native.parent()
        if not isinstance(dock, QDockWidget) or dock.widget() is not native:
            return
        area = _DockScrollArea()
        area._magic_widget = self._container  # napari's dock_widgets maps to the container
        dock.setWidget(area)
        area.setWidget(native)
        area.follow_width()


class _DockScrollArea(QScrollArea):
    """Scrolls vertically; as wide as its widget needs (a plain scroll area would let the dock
    squeeze the widget and cut its right edge off)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

    def follow_width(self) -> None:
        """At least as wide as the widget's own minimum (its rows change as it is used)."""
        inner = self.widget()
        if inner is not None:
            scrollbar = self.verticalScrollBar().sizeHint().width()
            self.setMinimumWidth(inner.minimumSizeHint().width() + scrollbar)


def scroll_when_docked(container: Container) -> None:
    """Make ``container`` scroll (vertically) inside whatever dock it is put in."""
    _ScrollWhenDocked(container)


def dock_scroll_area(container: Container) -> QScrollArea | None:
    """The scroll area ``container`` was put in when docked, if it has been."""
    viewport = container.native.parent()
    area = viewport.parent() if viewport is not None else None
    return area if isinstance(area, QScrollArea) else None


def window_size(available: tuple[int, int]) -> tuple[int, int]:
    """A window size for a screen whose free area is ``available`` (width, height) px."""
    return tuple(  # type: ignore[return-value]
        min(int(WINDOW_SHARE * free), most)
        for free, most in zip(available, MAX_WINDOW, strict=True)
    )


def fit_window(viewer: napari.Viewer) -> tuple[int, int]:
    """Size napari's window for the screen it is on; returns the size."""
    screen = QApplication.primaryScreen()
    free = screen.availableGeometry() if screen is not None else None
    size = window_size((free.width(), free.height()) if free is not None else MAX_WINDOW)
    window: Any = viewer.window._qt_window
    window.resize(*size)
    return size
