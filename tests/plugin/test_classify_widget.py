"""The "Classify scan" widget on a real napari viewer: the result equals the core's, the saliency
layer lies over the scan, nothing piles up, bad input is explained, Cancel works, and the viewer
stays responsive while the model runs.

Tiny untrained models keep it fast; the checks are about wiring and geometry, not skill.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from model_fixtures import CLASSES, tiny_bundle
from napari.components import ViewerModel
from napari.layers import Image, Layer
from napari.utils import progress
from napari.utils.notifications import Notification, NotificationSeverity
from pytestqt.qtbot import QtBot
from qtpy.QtCore import Qt, QTimer

from napari_scan_classifier.inference import classify
from napari_scan_classifier.models import Bundle, load_bundle, save_bundle
from napari_scan_classifier.plugin.layers import (
    VOLUME_KEY,
    find_result_layer,
    volume_to_layer_data,
)
from napari_scan_classifier.plugin.widgets.classify import (
    CLASSIFICATION_KEY,
    PEAK_KEY,
    PREDICTED_CHOICE,
    SALIENCY_KIND,
    SCAN_NAME_KEY,
    ClassifyWidget,
    prediction_text,
)
from napari_scan_classifier.plugin.widgets.result_chart import CURSOR_GID
from napari_scan_classifier.plugin.widgets.workers import DISPLAY_PERCENTILE, DISPLAY_SAMPLE
from napari_scan_classifier.results import slice_text
from napari_scan_classifier.saliency import grad_cam, maps
from napari_scan_classifier.volume import Volume

PLUGIN = "napari-scan-classifier"
THREE = ["normal", "tumour", "infarct"]
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def cnn_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_bundle(tiny_bundle(), tmp_path_factory.mktemp("models") / "cnn3d")


@pytest.fixture(scope="module")
def gru_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_bundle(tiny_bundle("slice_gru"), tmp_path_factory.mktemp("models") / "gru")


@pytest.fixture(scope="module")
def three_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bundle = tiny_bundle("slice_gru", classes=THREE)
    return save_bundle(bundle, tmp_path_factory.mktemp("models") / "three")


def _widget(viewer: ViewerModel, model: Path, **options: object) -> ClassifyWidget:
    widget = ClassifyWidget(viewer)
    widget.model.value = model
    widget.passes.value = 3
    for name, value in options.items():
        getattr(widget, name).value = value
    return widget


def _sample(viewer: ViewerModel) -> Image:
    (layer,) = viewer.open_sample(PLUGIN, "phantom_ct")
    return layer


def _run(qtbot: QtBot, widget: ClassifyWidget) -> None:
    """Press Classify and wait for the worker to finish."""
    widget.run_button.clicked.emit()
    assert widget.worker is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)


def _chart(qtbot: QtBot, widget: ClassifyWidget) -> Figure:
    """The dock's chart once it shows the latest result (it is drawn in the background)."""
    qtbot.waitUntil(widget.chart.up_to_date, timeout=WAIT_MS)
    return widget.chart.figure


def _messages(notifications: list[Notification], severity: NotificationSeverity) -> list[str]:
    return [n.message for n in notifications if n.severity == severity]


def test_classify_adds_an_aligned_saliency_layer_and_the_result(
    viewer: ViewerModel, qtbot: QtBot, cnn_dir: Path
) -> None:
    scan = _sample(viewer)
    widget = _widget(viewer, cnn_dir, saliency="gradcam")
    assert widget.scan.value is scan  # the active layer by default

    _run(qtbot, widget)

    volume: Volume = scan.metadata[VOLUME_KEY]
    bundle = load_bundle(cnn_dir)
    result = scan.metadata[CLASSIFICATION_KEY]
    expected = classify(volume, bundle, method="none")
    assert list(result["probabilities"]) == CLASSES
    assert sum(result["probabilities"].values()) == pytest.approx(1.0)
    for name in CLASSES:
        assert result["probabilities"][name] == pytest.approx(expected.probabilities[name])
    assert result["predicted_class"] == expected.predicted_class
    assert result["uncertainty"]["passes"] == 3 and result["device"]
    assert result["saliency"]["faithfulness"]["target_class"] == expected.predicted_class

    saliency = find_result_layer(viewer.layers, scan, SALIENCY_KIND)
    assert saliency is not None and len(viewer.layers) == 2
    assert saliency.name == f"Grad-CAM · {expected.predicted_class}"
    assert saliency.metadata[SCAN_NAME_KEY] == scan.name
    np.testing.assert_allclose(saliency.affine.affine_matrix, scan.affine.affine_matrix)
    reference = grad_cam(volume, bundle).values
    aligned = volume.with_voxels(reference).world_aligned().voxels
    np.testing.assert_allclose(saliency.data, aligned, atol=1e-6)
    assert float(saliency.data.max()) == pytest.approx(1.0) and float(saliency.data.min()) >= 0
    assert saliency.blending == "additive" and saliency.colormap.name == "inferno"
    assert saliency.metadata[CLASSIFICATION_KEY] == result

    assert f"Predicted: {expected.predicted_class}" in widget.summary.value
    assert widget.banner.native.isHidden() and widget.banner.value == ""
    verdict = "passed" if result["saliency"]["faithfulness"]["passed"] else "FAILED"
    assert f"Saliency check {verdict}: " in widget.summary.value
    assert "sphere-test v1" in widget.summary.value and result["device"] in widget.summary.value
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_classifying_again_updates_the_same_layer(
    viewer: ViewerModel, qtbot: QtBot, cnn_dir: Path
) -> None:
    scan = _sample(viewer)
    widget = _widget(viewer, cnn_dir, saliency="gradcam")
    _run(qtbot, widget)
    saliency = find_result_layer(viewer.layers, scan, SALIENCY_KIND)
    scan.name = "renamed"
    assert widget.scan.value is scan

    widget.passes.value = 0
    _run(qtbot, widget)

    assert len(viewer.layers) == 2
    assert find_result_layer(viewer.layers, scan, SALIENCY_KIND) is saliency
    assert saliency.name.startswith("Grad-CAM · ")
    assert saliency.metadata[SCAN_NAME_KEY] == "renamed"
    assert scan.metadata[CLASSIFICATION_KEY]["uncertainty"]["method"] == "none"

    widget.saliency.value = "none"
    _run(qtbot, widget)
    assert list(viewer.layers) == [scan]  # a stale map is not left behind


def test_per_slice_scores_follow_the_slider(
    viewer: ViewerModel, qtbot: QtBot, gru_dir: Path
) -> None:
    scan = _sample(viewer)
    widget = _widget(viewer, gru_dir, saliency="none")
    _run(qtbot, widget)
    result = scan.metadata[CLASSIFICATION_KEY]
    scores = result["per_slice"]
    assert set(scores) == set(CLASSES) and len(scores[CLASSES[1]]) == scan.data.shape[0]

    for step in (5, 40):
        viewer.dims.set_current_step(0, step)
        k = round(float(scan.world_to_data(viewer.dims.point)[0]))  # napari's own transform
        overlay = viewer.canvas.overlays.text
        assert overlay.visible and overlay.text == slice_text(result, k)
        assert f"p({CLASSES[1]})={scores[CLASSES[1]][k]:.2f}" in overlay.text
        (cursor,) = _chart(qtbot, widget).findobj(lambda a: a.get_gid() == CURSOR_GID)
        assert cursor.get_xdata()[0] == k + 1


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda v: v.add_labels(np.zeros((4, 8, 8), dtype=np.uint8)), "Open a CT or MR scan"),
        (lambda v: v.add_image(np.zeros((32, 32), dtype=np.float32), name="xray"), "2D"),
        (lambda v: v.add_image(np.zeros((4, 8, 8, 3), dtype=np.uint8), rgb=True), "RGB"),
    ],
    ids=["labels only", "2D image", "RGB"],
)
def test_layers_that_are_not_scans_are_explained_at_once(
    viewer: ViewerModel,
    notifications: list[Notification],
    make,
    expected: str,
    cnn_dir: Path,
) -> None:
    make(viewer)
    widget = _widget(viewer, cnn_dir)

    assert widget.classify() is None

    assert expected in notifications[-1].message
    assert widget.run_button.enabled and len(viewer.layers) == 1


def _nan_scan(viewer: ViewerModel) -> Layer:
    volume = Volume(np.full((8, 16, 16), 40.0, dtype=np.float32), np.eye(4), modality="CT")
    volume.voxels[2, 3, 4] = np.nan
    return Layer.create(*volume_to_layer_data(volume))


def _segmentation(viewer: ViewerModel) -> Layer:
    labels = np.zeros((8, 16, 16), dtype=np.uint8)
    labels[2:5, 4:9, 4:9] = 2
    return viewer.add_image(labels, name="mask opened as an image")


@pytest.mark.parametrize(
    ("make", "model", "expected"),
    [
        (_nan_scan, None, "NaN"),
        (_segmentation, None, "label image"),
        (_nan_scan, "broken", "cannot be used"),
    ],
    ids=["NaN voxels", "segmentation", "invalid bundle"],
)
def test_worker_errors_become_one_line(
    viewer: ViewerModel,
    qtbot: QtBot,
    notifications: list[Notification],
    tmp_path: Path,
    cnn_dir: Path,
    make,
    model: str | None,
    expected: str,
) -> None:
    layer = make(viewer)
    if layer not in viewer.layers:
        viewer.layers.append(layer)
    if model:
        (tmp_path / model).mkdir()
        (tmp_path / model / "bundle.json").write_text("{}")
    widget = _widget(viewer, tmp_path / model if model else cnn_dir)

    _run(qtbot, widget)

    errors = _messages(notifications, NotificationSeverity.ERROR)
    assert len(errors) == 1 and expected in errors[0], errors
    assert "Traceback" not in errors[0] and "\n" not in errors[0]
    assert CLASSIFICATION_KEY not in layer.metadata and len(viewer.layers) == 1
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_other_modality_warns_and_goes_on(
    viewer: ViewerModel, qtbot: QtBot, notifications: list[Notification], cnn_dir: Path
) -> None:
    (mr,) = viewer.open_sample(PLUGIN, "phantom_mr")
    widget = _widget(viewer, cnn_dir, saliency="none")

    _run(qtbot, widget)

    (warning,) = _messages(notifications, NotificationSeverity.WARNING)
    assert "'MR'" in warning and "trained on CT" in warning
    assert sum(mr.metadata[CLASSIFICATION_KEY]["probabilities"].values()) == pytest.approx(1.0)
    assert "Warning:" in widget.summary.value
    # Out of distribution: a banner gives the reasons in words, the bars are greyed.
    ood = mr.metadata[CLASSIFICATION_KEY]["ood"]
    assert not ood["in_distribution"]
    assert "the scan is MR but the model was trained on CT scans" in ood["reasons"]
    assert not widget.banner.native.isHidden()
    assert widget.banner.value.startswith("OUT OF DISTRIBUTION: this scan is unlike the scans")
    assert "  - the scan is MR but the model was trained on CT scans" in widget.banner.value
    assert "OUT OF DISTRIBUTION" not in widget.summary.value
    (axes, *_) = _chart(qtbot, widget).axes
    assert axes.get_title() == "p(class) ± SD: out of distribution, not reliable"
    assert {bar.get_alpha() for bar in axes.patches} == {0.45}


@pytest.mark.parametrize(
    ("how", "most_reports"), [("cancel button", 1), ("napari quits the worker", 2)]
)
def test_cancel_stops_the_worker(
    viewer: ViewerModel,
    qtbot: QtBot,
    notifications: list[Notification],
    cnn_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
    most_reports: int,
) -> None:
    """Occlusion takes many forward passes; cancelling at the first of them ends it there. The
    core's reporter holds the job after its first occlusion report until the test has asked for
    the cancel, so how many reports get out does not depend on how busy the machine is: the
    Cancel button stops the core at its next report. A quit worker checks between yields: it
    notices before the next one when the quit reaches it first (the yield's signal is queued,
    so which comes first is the threads' race), else right after it: at most one more report
    gets out."""
    asked = threading.Event()

    class HoldingReporter(maps.Reporter):
        def __call__(self, message: str) -> None:
            super().__call__(message)
            if message.startswith("occluding") and not asked.is_set():
                asked.wait(WAIT_MS / 1000)  # a hang guard; the test sets it at once

    monkeypatch.setattr(maps, "Reporter", HoldingReporter)
    scan = _sample(viewer)
    widget = _widget(viewer, cnn_dir, saliency="occlusion")
    reports: list[str] = []
    totals: set[int] = set()
    worker = widget.classify()

    def cancel_once_occluding(report: tuple[int, int, str]) -> None:
        reports.append(report[2])
        if report[2].startswith("occluding"):
            totals.add(report[1])
        if report[2].startswith("occluding") and widget.cancel_button.enabled:
            if how == "cancel button":
                widget.cancel_button.clicked.emit()
            else:
                worker.quit()
                widget.cancel_button.enabled = False
            asked.set()

    worker.yielded.connect(cancel_once_occluding)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)

    # stopped within a batch of patches, not after the whole map: counted, not timed
    assert 1 <= sum(r.startswith("occluding") for r in reports) <= most_reports < min(totals)
    assert "Classification cancelled." in _messages(notifications, NotificationSeverity.INFO)
    assert not _messages(notifications, NotificationSeverity.ERROR)
    assert CLASSIFICATION_KEY not in scan.metadata and len(viewer.layers) == 1
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_demo_viewer_opens_classified(qtbot: QtBot, cnn_dir: Path, mock_app_model) -> None:
    # mock_app_model: the demo's own Viewer registers the plugin's actions in a throwaway napari
    # app, so a later test's Viewer does not find them registered already.
    from qt_support import opengl_available

    if not opengl_available():
        pytest.skip("napari's window needs OpenGL: run under Xvfb (pytest-xvfb)")
    from napari_scan_classifier.plugin.demo import CLASSIFY_DOCK, open_demo_viewer

    viewer = open_demo_viewer(show=False, classify=True, model=str(cnn_dir))
    try:
        widget = viewer.window.dock_widgets[CLASSIFY_DOCK]
        qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
        scan, saliency = viewer.layers
        assert find_result_layer(viewer.layers, scan, SALIENCY_KIND) is saliency
        assert "Predicted:" in widget.summary.value
    finally:
        viewer.close()


def test_go_to_the_most_salient_slice(viewer: ViewerModel, qtbot: QtBot, cnn_dir: Path) -> None:
    scan = _sample(viewer)
    widget = _widget(viewer, cnn_dir, passes=0, check=False)
    assert widget.goto_button.native.isHidden()
    _run(qtbot, widget)
    saliency = find_result_layer(viewer.layers, scan, SALIENCY_KIND)
    saliency.visible = False
    viewer.dims.set_current_step(0, 0)

    point = widget.go_to_salient_slice()

    assert not widget.goto_button.native.isHidden() and saliency.visible
    peak = np.unravel_index(np.argmax(saliency.data), saliency.data.shape)  # napari's own grid
    on_screen = np.round(saliency.world_to_data(viewer.dims.point)).astype(int)
    assert on_screen[0] == peak[0] and saliency.metadata[PEAK_KEY] == point
    assert float(saliency.data[on_screen[0]].max()) == pytest.approx(1.0)
    positive = saliency.data[saliency.data > 0]
    assert round((saliency.data.size / DISPLAY_SAMPLE) ** (1 / 3)) == 1  # sampled whole
    top = saliency.contrast_limits[1]
    assert top == pytest.approx(float(np.percentile(positive, DISPLAY_PERCENTILE)))
    assert saliency.contrast_limits[0] == 0.0 and 0.0 < top <= 1.0
    result = scan.metadata[CLASSIFICATION_KEY]
    assert viewer.canvas.overlays.text.text == prediction_text(result)
    assert viewer.canvas.overlays.text.text.startswith("Predicted: ")


def test_the_qt_thread_runs_while_the_worker_classifies(
    viewer: ViewerModel, qtbot: QtBot, cnn_dir: Path
) -> None:
    """The worker is held at each of its first three progress reports until the Qt thread has
    ticked five more times: a job run on (or blocking) the Qt thread could never be released.
    No clock: the worker is known busy by construction, and a slow machine only ticks later."""
    scan = _sample(viewer)
    widget = _widget(viewer, cnn_dir)
    ticks: list[int] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(10)
    released: list[bool] = []

    def hold_until_the_qt_thread_ticks(_: object) -> None:  # runs in the worker thread
        if len(released) < 3:
            target = len(ticks) + 5
            released.append(_wait(lambda: len(ticks) >= target, 60.0))

    worker = widget.classify()
    worker.yielded.connect(hold_until_the_qt_thread_ticks, type=Qt.ConnectionType.DirectConnection)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    timer.stop()

    assert released == [True, True, True]
    assert CLASSIFICATION_KEY in scan.metadata


def test_progress_shows_in_the_dock_not_in_napari_activity(
    viewer: ViewerModel, qtbot: QtBot, cnn_dir: Path
) -> None:
    """The dock's own bar counts the worker's steps and hides at the end; napari's activity
    dialog (a new bar per job, a window layout per description) is never used."""
    _sample(viewer)
    widget = _widget(viewer, cnn_dir)
    seen: list[tuple[int, int, bool, int, int, int]] = []

    def record(report: tuple[int, int, str]) -> None:  # in the Qt thread, after the dock's own
        bar = widget.progress_bar
        done, total, _ = report
        seen.append((done, total, bar.running, bar.value, bar.max, len(progress._all_instances)))

    worker = widget.classify()
    assert widget.progress_bar.running and widget.progress_bar.max == 0  # busy until counted
    worker.yielded.connect(record)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)

    assert len(seen) > 3 and any(done == total > 1 for done, total, *_ in seen)
    for done, total, running, value, maximum, instances in seen:
        assert running and (value, maximum) == (done, total) and instances == 0
    assert not widget.progress_bar.running and widget.progress_bar.native.isHidden()


def _wait(condition, limit_s: float) -> bool:
    """Poll ``condition`` from a worker thread (sleeping, so the Qt thread can run)."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_three_classes_get_bars_curves_and_a_map_for_any_class(
    viewer: ViewerModel, qtbot: QtBot, three_dir: Path
) -> None:
    scan = _sample(viewer)
    widget = _widget(viewer, three_dir, saliency="gradcam", passes=0, check=False)
    assert widget.explain.choices == (None,)  # the predicted class; the model is not loaded yet

    _run(qtbot, widget)

    volume: Volume = scan.metadata[VOLUME_KEY]
    bundle = load_bundle(three_dir)
    result = scan.metadata[CLASSIFICATION_KEY]
    expected = classify(volume, bundle, method="none")
    predicted = expected.predicted_class
    assert result["predicted_class"] == predicted
    assert widget.explain.choices == (None, *THREE)
    assert [widget.explain.native.itemText(i) for i in range(4)] == [PREDICTED_CHOICE, *THREE]
    bars, slices = _chart(qtbot, widget).axes
    widths = [bar.get_width() for bar in bars.patches]
    assert widths == pytest.approx([expected.probabilities[c] for c in THREE])
    assert [bar.get_y() + bar.get_height() / 2 for bar in bars.patches] == [2, 1, 0]  # top down
    assert [t.get_text() for t in bars.get_yticklabels()] == THREE
    curves = [line for line in slices.lines if line.get_label() in THREE]
    assert [line.get_label() for line in curves] == THREE
    for line, name in zip(curves, THREE, strict=True):
        per_slice = np.array([np.nan if v is None else v for v in result["per_slice"][name]])
        np.testing.assert_allclose(line.get_ydata(), per_slice)
    saliency = find_result_layer(viewer.layers, scan, SALIENCY_KIND)
    assert saliency.name == f"Grad-CAM · {predicted}"

    other = next(c for c in THREE if c != predicted)
    widget.explain.value = other  # explains that class of the same prediction
    assert widget.worker is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)

    assert find_result_layer(viewer.layers, scan, SALIENCY_KIND) is saliency  # in place
    assert saliency.name == f"Grad-CAM · {other}" and len(viewer.layers) == 2
    reference = grad_cam(volume, bundle, other).values
    aligned = volume.with_voxels(reference).world_aligned().voxels
    np.testing.assert_allclose(saliency.data, aligned, atol=1e-6)
    assert not np.allclose(
        aligned,
        volume.with_voxels(grad_cam(volume, bundle).values).world_aligned().voxels,
        atol=1e-3,
    )
    result = scan.metadata[CLASSIFICATION_KEY]
    assert result["saliency"]["target_class"] == other and result["predicted_class"] == predicted
    assert widget.explain.value == other

    widget.passes.value = 1
    _run(qtbot, widget)  # classifying again keeps the chosen class
    assert scan.metadata[CLASSIFICATION_KEY]["saliency"]["target_class"] == other
    assert scan.metadata[CLASSIFICATION_KEY]["uncertainty"]["passes"] == 1


def test_the_dock_says_the_operating_point_that_called_the_class(
    viewer: ViewerModel, qtbot: QtBot, tmp_path: Path
) -> None:
    rule = {"kind": "threshold", "positive_class": "lesion", "threshold": 1e-6}
    base = tiny_bundle()
    model = save_bundle(
        Bundle(replace(base.metadata, decision_rule=rule), base.model), tmp_path / "thr"
    )
    _sample(viewer)
    widget = _widget(viewer, model, passes=0, check=False)

    _run(qtbot, widget)

    lines = widget.summary.value.splitlines()
    assert lines[:2] == ["Predicted: lesion", "Decision: lesion when p(lesion) >= 0.000"]
