"""Fixtures for the plugin tests: a viewer, scans on disk and the notifications napari showed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import npe2
import numpy as np
import pytest
from napari.components import ViewerModel
from napari.utils.notifications import Notification, notification_manager
from qt_support import opengl_available
from scan_files import DicomSeries, write_ct_series


@pytest.fixture
def viewer(make_napari_viewer, qapp) -> ViewerModel:
    """A real napari viewer (Qt window, canvas) wherever OpenGL exists, as under pytest-xvfb in CI.

    Offscreen Qt cannot give a canvas OpenGL; there the same open/save code runs on napari's
    window-less ViewerModel instead, so the reader and writer are still tested.
    """
    npe2.PluginManager.instance().discover()
    return make_napari_viewer() if opengl_available() else ViewerModel()


@pytest.fixture
def ct_series(tmp_path: Path) -> DicomSeries:
    return write_ct_series(tmp_path / "ct", "Chest CT", 3)


@pytest.fixture
def mr_nifti(tmp_path: Path) -> Path:
    """A 3D MR-like NIfTI with an oblique RAS affine and a spread of intensities."""
    rng = np.random.default_rng(0)
    data = rng.gamma(2.0, 100.0, size=(12, 10, 8)).astype(np.float32)  # (i, j, k)
    affine = np.array(
        [[0.0, 0.0, 3.0, -40.0], [0.9, 0.3, 0.0, 25.0], [-0.3, 0.9, 0.0, -12.0], [0, 0, 0, 1]]
    )
    path = tmp_path / "brain_t1.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


@pytest.fixture
def notifications() -> Iterator[list[Notification]]:
    """Every napari notification shown during the test, in order."""
    shown: list[Notification] = []
    notification_manager.notification_ready.connect(shown.append)
    yield shown
    notification_manager.notification_ready.disconnect(shown.append)
