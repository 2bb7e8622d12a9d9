"""Scans display as radiologists read them, checked on pixels napari actually rendered.

A ball at the patient's right-anterior-superior must appear up and to the left of the body's
centre in every standard plane: axial (anterior up, patient right on the viewer's left), coronal
and sagittal (superior up; anterior on the left in sagittal). Needs a display with
OpenGL, e.g. ``xvfb-run -a python -m pytest``; skipped under offscreen Qt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scan_files import AXIAL, BALL_LPS, SAGITTAL, write_ball_phantom

from napari_scan_classifier.volume import lps_to_world

PLANES = {"axial": (0, 1, 2), "coronal": (1, 0, 2), "sagittal": (2, 0, 1)}


@pytest.fixture
def rendering_viewer(request: pytest.FixtureRequest, qapp):
    """A shown viewer that really renders: offscreen Qt has no OpenGL without a display, and
    draws a wrongly sized canvas with one, so these tests need a (virtual) X display."""
    from qtpy.QtGui import QOpenGLContext

    if qapp.platformName() == "offscreen" or not QOpenGLContext().create():
        pytest.skip(
            "needs a display with OpenGL: run under xvfb-run, not QT_QPA_PLATFORM=offscreen"
        )
    return request.getfixturevalue("make_napari_viewer")(show=True)


def _centroid(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask).mean(axis=0)  # (screen row, screen column)


@pytest.mark.parametrize(
    "iop", [AXIAL, SAGITTAL], ids=["axial acquisition", "sagittal acquisition"]
)
@pytest.mark.parametrize("plane", list(PLANES))
def test_ball_is_up_and_left_in_every_plane(
    rendering_viewer, qtbot, tmp_path: Path, iop: tuple[float, ...], plane: str
) -> None:
    write_ball_phantom(tmp_path / "ball", iop)
    viewer = rendering_viewer
    (layer,) = viewer.open(tmp_path / "ball", plugin="napari-scan-classifier")
    layer.contrast_limits = (-1000, 600)  # air black, body mid grey, ball white
    translation = np.eye(4)
    translation[:3, 3] = BALL_LPS

    qtbot.wait(200)
    viewer.dims.order = PLANES[plane]
    viewer.dims.point = tuple(lps_to_world(translation)[:3, 3])
    viewer.reset_view()
    qtbot.wait(200)
    grey = viewer.screenshot(canvas_only=True, flash=False)[..., :3].mean(axis=-1)

    ball, body = _centroid(grey > 200), _centroid(grey > 60)
    assert ball[0] < body[0] - 10, "expected the ball above the centre (anterior/superior up)"
    assert ball[1] < body[1] - 10, "expected the ball left of the centre (patient right/anterior)"
