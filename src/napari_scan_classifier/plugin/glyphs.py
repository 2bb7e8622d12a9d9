"""Render the canvas text's glyphs ahead of time, one per turn of the event loop.

napari draws canvas text (the text overlay where the prediction is shown) with vispy, which
renders the signed distance field of each character on the CPU the first time it is drawn:
30 glyphs took 150-200 ms of the first classification's 340 ms freeze on a 2-core machine with
software OpenGL, in one piece. Rendering them while the viewer is idle, one per turn, spreads
that work into steps of a few milliseconds.

napari has no public API for its canvas fonts, so this reaches into the Qt viewer's canvas; with
a napari whose canvas differs, nothing is warmed and the first text costs what it always did.
"""

from __future__ import annotations

import string
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QTimer

if TYPE_CHECKING:
    import napari

# What the overlay shows (class names, "Predicted: lesion (p = 0.85)", "slice 12/72: p(x)=0.17"),
# and the capitals with diacritics vispy measures every text's line height with.
CHARACTERS = string.ascii_letters + string.digits + " ().:=/-_%" + "ÅÉÑŐ"


def canvas_font(viewer: napari.viewer.Viewer) -> Any | None:
    """The texture font napari's canvas text uses, or None where the canvas has none."""
    viewer = getattr(viewer, "__wrapped__", viewer)  # napari hands plugins a public-only proxy
    try:
        info = viewer.window._qt_viewer.canvas.font_info  # a method in napari 0.9
        info = info() if callable(info) else info
        return info.font_manager.get_font(info.face, False, False)
    except (AttributeError, TypeError):
        return None


def warm_glyphs(viewer: napari.viewer.Viewer, characters: str = CHARACTERS) -> QTimer | None:
    """Start rendering ``characters`` into the canvas font, one per event-loop turn; returns
    the timer (keep it: it stops itself when done), or None when there is nothing to warm."""
    font = canvas_font(viewer)
    if font is None:
        return None
    pending = list(dict.fromkeys(characters))
    timer = QTimer()

    def step() -> None:
        if pending:
            font[pending.pop(0)]  # renders and stores the glyph
        if not pending:
            timer.stop()

    timer.timeout.connect(step)
    timer.start(0)
    return timer
