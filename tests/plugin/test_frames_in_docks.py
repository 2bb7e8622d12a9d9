"""A 4D scan in the docks: the volume on screen (napari's first slider) is the one classified,
or saved as a case with its painted mask; the dock and the map's name say which."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from model_fixtures import tiny_bundle
from napari.components import ViewerModel
from napari.layers import Image
from pytestqt.qtbot import QtBot
from test_frames import four_d_ct

from napari_scan_classifier.cases import DRAFTS, CaseLibrary
from napari_scan_classifier.inference import classify
from napari_scan_classifier.models import load_bundle, save_bundle
from napari_scan_classifier.plugin.layers import find_result_layer, volume_to_layer_data
from napari_scan_classifier.plugin.widgets.annotate import AnnotateWidget
from napari_scan_classifier.plugin.widgets.classify import (
    CLASSIFICATION_KEY,
    SALIENCY_KIND,
    ClassifyWidget,
)
from napari_scan_classifier.volume import Volume

WAIT_MS = 60_000


@pytest.fixture(scope="module")
def cnn_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_bundle(tiny_bundle(), tmp_path_factory.mktemp("models") / "cnn3d")


def _show(viewer: ViewerModel, scan: Volume, frame: int) -> Image:
    data, kwargs, _ = volume_to_layer_data(scan)
    layer = viewer.add_image(data, **kwargs)
    viewer.dims.set_point(0, frame)
    return layer


@pytest.mark.parametrize("shown", [1, 2])
def test_the_frame_on_screen_is_classified(
    viewer: ViewerModel, qtbot: QtBot, cnn_dir: Path, shown: int
) -> None:
    scan = four_d_ct()
    layer = _show(viewer, scan, shown)
    widget = ClassifyWidget(viewer)
    widget.model.value = cnn_dir
    widget.saliency.value = "gradcam"

    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)

    result = layer.metadata[CLASSIFICATION_KEY]
    expected = classify(scan.frame(shown), load_bundle(cnn_dir), method="none")
    assert (result["frame"], result["frames"]) == (shown, 3)
    for name, p in expected.probabilities.items():
        assert result["probabilities"][name] == pytest.approx(p, abs=1e-5)
    assert f"Frame: {shown} of a 4D scan (0 to 2)" in widget.summary.value
    saliency = find_result_layer(viewer.layers, layer, SALIENCY_KIND)
    assert saliency is not None and saliency.ndim == 3
    assert saliency.name.endswith(f" · frame {shown}")
    np.testing.assert_allclose(saliency.affine.affine_matrix, layer.affine.affine_matrix[1:, 1:])


def test_the_frame_on_screen_is_saved_as_a_case_with_its_mask(
    viewer: ViewerModel, qtbot: QtBot, tmp_path: Path
) -> None:
    scan = four_d_ct()
    layer = _show(viewer, scan, 2)
    widget = AnnotateWidget(viewer)
    widget.library.value = tmp_path / "library"
    widget.scan.value = layer
    mask = widget.add_mask()
    _finish(qtbot, widget)
    mask.data[5:8, 10:20, 10:20] = 1
    mask.paint((6, 15, 15), 1)  # a stroke: its draft is written as for any scan
    widget.drafts.timer.stop()
    widget.drafts.flush()
    _finish(qtbot, widget)
    drafts = tmp_path / "library" / DRAFTS
    assert len(list(drafts.iterdir())) == 1
    widget.new_label.value = "lesion"

    assert widget.save_case() is not None
    _finish(qtbot, widget)

    library = CaseLibrary(widget.library.value)
    (record,) = library.list()
    volume, saved_mask = library.load(record.case_id)
    assert record.label == "lesion" and record.shape == (20, 40, 40)
    np.testing.assert_array_equal(volume.voxels, scan.voxels[2])
    np.testing.assert_allclose(volume.affine, scan.affine)
    np.testing.assert_array_equal(saved_mask.astype(bool), mask.data.astype(bool))
    assert list(drafts.iterdir()) == []  # the draft goes once its frame is saved


def _finish(qtbot: QtBot, widget: AnnotateWidget) -> None:
    qtbot.waitUntil(lambda: widget.worker is None and not widget.drafts.busy, timeout=WAIT_MS)
