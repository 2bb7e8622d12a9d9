"""What the Qt platform under the tests can do."""

from __future__ import annotations


def opengl_available() -> bool:
    """Whether napari's canvas can get OpenGL (a real or virtual display, not offscreen Qt)."""
    from qtpy.QtGui import QOpenGLContext
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    return app is not None and app.platformName() != "offscreen" and QOpenGLContext().create()
