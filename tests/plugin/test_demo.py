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


@pytest.mark.slow
def test_demo_opens_on_a_lesion_with_the_whole_body_in_view(qapp, qtbot) -> None:
    """The bundled model classifies the sample; the view lands on a slice through a lesion, with
    the saliency map shown, the whole scan on the canvas and the answer on it."""
    if not opengl_available():
        pytest.skip("napari's window needs OpenGL: run under Xvfb (pytest-xvfb)")
    from napari_scan_classifier.phantoms import sample_ct_phantom
    from napari_scan_classifier.plugin.demo import CLASSIFY_DOCK, open_demo_viewer

    viewer = open_demo_viewer(show=False, classify=True)
    try:
        widget = viewer.window.dock_widgets[CLASSIFY_DOCK]
        qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
        qtbot.wait(100)  # the demo's own end-of-job handler, then a paint
        scan, saliency = viewer.layers
        phantom = sample_ct_phantom()  # the ground truth, on the grid that made the sample
        k = round(float(phantom.volume.world_to_index(viewer.dims.point[-3:])[0, 0]))
        assert phantom.lesion_mask[k].any(), f"slice {k} holds no lesion"
        assert saliency.visible and saliency.name == "Integrated gradients · lesion"
        assert viewer.canvas.overlays.text.text.startswith("Predicted: lesion (p = ")

        height, width = viewer.canvas.size
        half = 0.5 * np.array([height, width]) / viewer.camera.zoom
        centre = np.asarray(viewer.camera.center)[-2:]
        low, high = scan.extent.world[:, -2:]
        assert np.all(centre - half <= low + 1e-3) and np.all(high - 1e-3 <= centre + half)
        assert max((high - low) / (2 * half)) > 0.8  # fitted, not lost in a corner
    finally:
        viewer.close()


def test_headless_demo_prints_the_sample(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--headless"])
    out, err = capsys.readouterr()
    assert "CT #1 Synthetic CT phantom: (72, 128, 128) voxels, 2.5 x 1.5 x 1.5 mm" in out
    assert code == 0, err
    assert "Predicted: lesion" in out  # the sample CT phantom has two lesions
