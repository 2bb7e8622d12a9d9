"""Shared test setup, kept small."""

import os

import pytest

import napari_scan_classifier  # noqa: F401  (first: loads TensorFlow beside OpenGL safely)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """Use the virtual display pytest-xvfb started (OpenGL works there); else Qt offscreen.

    Offscreen Qt has no OpenGL, so tests that render (or add layers to a Qt viewer) skip there.
    """
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
