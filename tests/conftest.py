"""Shared test setup, kept small."""

import os
from collections.abc import Iterator

import pytest

import napari_scan_classifier  # noqa: F401  (first: loads TensorFlow beside OpenGL safely)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """Use the virtual display pytest-xvfb started (OpenGL works there); else Qt offscreen.

    Offscreen Qt has no OpenGL, so tests that render (or add layers to a Qt viewer) skip there.
    """
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(autouse=True, scope="session")
def _no_installed_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The models a user installed never take part in the tests: ``--model auto`` chooses among
    the shipped ones and what a test installs into this (empty) folder."""
    from napari_scan_classifier.outputs import MODELS_FOLDER_VARIABLE

    folder = tmp_path_factory.mktemp("installed_models")
    previous = os.environ.get(MODELS_FOLDER_VARIABLE)
    os.environ[MODELS_FOLDER_VARIABLE] = str(folder)
    yield
    if previous is None:
        os.environ.pop(MODELS_FOLDER_VARIABLE, None)
    else:
        os.environ[MODELS_FOLDER_VARIABLE] = previous
