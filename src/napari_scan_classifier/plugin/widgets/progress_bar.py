"""A progress bar inside a dock, hidden while the dock is idle.

Why not ``napari.utils.progress``: each one builds a new bar in napari's activity dialog and its
status-bar summary, and every new description lays the window out again. On a 2-core machine
with software OpenGL that froze the viewer for 50-100 ms each time a job started (more for each
new description), longer than a user tolerates. A bar owned by the dock is built once and only
repaints itself.
"""

from __future__ import annotations

from magicgui.widgets import ProgressBar


class DockProgress(ProgressBar):
    """Busy (moving) until a total is known, then ``done`` of ``total`` with a description."""

    def __init__(self) -> None:
        super().__init__(value=0, min=0, max=0, visible=False)
        self._description = ""
        self.running = False

    def start(self, description: str) -> None:
        self.update_to(0, 0, description)
        self.visible = self.running = True

    def update_to(self, done: int, total: int, description: str | None = None) -> None:
        """Show ``done`` of ``total`` (``total`` 0: busy), with ``description`` when given."""
        if description is not None and description != self._description:
            self._description = description
            self.native.setFormat(f"{description}: %v of %m" if description else "%v of %m")
        if self.max != total:
            self.max = max(total, 0)
        self.value = min(max(done, 0), self.max)

    def stop(self) -> None:
        self.visible = self.running = False
        self.update_to(0, 0, "")
