"""The demo command's viewer and its headless twin."""

from __future__ import annotations

import numpy as np
import pytest
from qt_support import opengl_available

from napari_scan_classifier.cli import main


def test_demo_viewer_shows_the_sample_ct_in_world_mm(qapp) -> None:
    if not opengl_available():
        pytest.skip("napari's window needs OpenGL: run under Xvfb (pytest-xvfb)")
    from napari_scan_classifier.plugin.demo import open_demo_viewer

    viewer = open_demo_viewer(show=False)
    try:
        (layer,) = viewer.layers
        assert layer.name == "CT #1 Synthetic CT phantom"
        np.testing.assert_allclose(np.abs(np.diag(layer.affine.affine_matrix)[:3]), [2.5, 1.5, 1.5])
        assert tuple(layer.contrast_limits) == (-160.0, 240.0)
        assert "Display" in viewer.window._dock_widgets
    finally:
        viewer.close()


def test_headless_demo_prints_the_sample(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--headless"])
    out, err = capsys.readouterr()
    assert "CT #1 Synthetic CT phantom: (72, 128, 128) voxels, 2.5 x 1.5 x 1.5 mm" in out
    assert code == 0, err
    assert "Predicted: lesion" in out  # the sample CT phantom has two lesions
