"""The Train widget: a tiny fine-tuning run reports progress, draws its curves, saves a new
version with its plots and hands it to the classifier; cancelling and bad data save nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import keras
import numpy as np
import pytest
from napari.components import ViewerModel
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QApplication, QMessageBox

from napari_scan_classifier.cases import CaseLibrary
from napari_scan_classifier.evaluation import evaluate
from napari_scan_classifier.models import (
    Bundle,
    BundleMetadata,
    build_cnn3d,
    load_bundle,
    save_bundle,
)
from napari_scan_classifier.phantoms import make_case
from napari_scan_classifier.plugin.widgets.classify import ClassifyWidget
from napari_scan_classifier.plugin.widgets.plots import PLOT_HEIGHT, render_rgba
from napari_scan_classifier.plugin.widgets.train import (
    DISK,
    RESULT_FIGURES,
    SCRATCH,
    TrainWidget,
    result_lines,
)
from napari_scan_classifier.training import TrainingEvent, TrainingResult
from napari_scan_classifier.training.guardrails import compare_with_base

GRID = (16, 16, 16)
CLASSES = ["normal", "lesion"]
TRAIN_TIMEOUT_MS = 120_000


def make_library(root: Path, labels: list[int]) -> Path:
    library = CaseLibrary(root)
    for seed, label in enumerate(labels):
        library.add(make_case(seed, label, shape=GRID).volume, CLASSES[label])
    return root


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """Six normal and six lesion cases on a 16^3 grid."""
    return make_library(tmp_path_factory.mktemp("cases"), [0, 1] * 6)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    keras.utils.set_random_seed(0)
    metadata = BundleMetadata(
        name="tiny",
        version=1,
        classes=CLASSES,
        modality="CT",
        task="volume",
        input_shape=GRID,
        target_spacing_mm=None,
        intensity={"kind": "ct_window", "center": 40.0, "width": 400.0},
        architecture="cnn3d",
    )
    bundle = Bundle(metadata, build_cnn3d((*GRID, 1), 2, width=4))
    return save_bundle(bundle, tmp_path_factory.mktemp("base") / "tiny-v1")


@pytest.fixture
def widget(viewer: ViewerModel, tmp_path: Path, library: Path) -> TrainWidget:
    widget = TrainWidget(viewer)
    widget.library.value = library
    widget.out.value = tmp_path / "models"
    widget.epochs.value = 1
    widget.batch_size.value = 4
    widget.validation.value = 0.35  # 12 cases: two or three of each class to validate on
    return widget


def answer(button: QMessageBox.StandardButton) -> None:
    """Press ``button`` in the next modal question as soon as it shows."""

    def press() -> None:
        box = QApplication.activeModalWidget()
        if isinstance(box, QMessageBox):
            box.button(button).click()
        else:
            QTimer.singleShot(10, press)

    QTimer.singleShot(0, press)


def result_with_verdict(bundle: Bundle, new: list[float], base: list[float]) -> TrainingResult:
    """A training result whose comparison with version 1 is made on validation cases, the first
    half normal, the rest lesion."""
    y = np.repeat([0, 1], len(new) // 2)
    new_p, base_p = (np.stack([1 - np.array(p), np.array(p)], axis=1) for p in (new, base))
    report = evaluate(y, new_p, CLASSES)
    comparison = compare_with_base(y, new_p, base_p, base_version=1)
    counts = {"validation": {"normal": len(y) // 2, "lesion": len(y) // 2}}
    return TrainingResult(bundle, {}, report, report, None, counts, comparison=comparison)


def test_using_a_version_that_did_not_measure_better_asks_first(widget, base_model):
    bundle = load_bundle(base_model)
    widget.result = result_with_verdict(bundle, [0.5, 0.7, 0.6, 0.4], [0.2, 0.6, 0.4, 0.5])

    box = widget.confirmation()

    assert box.text() == (
        "Against its base on the same validation cases, 'tiny' version 1 measured: not "
        "distinguishable. Use it in the classifier anyway?"
    )
    assert box.informativeText() == widget.result.comparison.message
    assert box.defaultButton() is box.button(QMessageBox.StandardButton.No)
    answer(QMessageBox.StandardButton.No)
    assert widget.use_in_classifier() is None  # declined: the classifier is left alone

    ranks = np.linspace(0.05, 0.95, 20)
    widget.result = result_with_verdict(bundle, list(ranks), list(ranks[::-1]))
    assert widget.result.comparison.verdict == "better"
    assert widget.confirmation() is None


def test_a_three_class_result_shows_each_class_and_a_three_by_three_matrix(widget, base_model):
    three = ("normal", "tumour", "infarct")
    y = np.array([0, 0, 0, 1, 1, 2, 2])
    p = np.array(
        [
            [0.8, 0.1, 0.1],
            [0.6, 0.3, 0.1],
            [0.3, 0.6, 0.1],  # normal called tumour
            [0.2, 0.7, 0.1],
            [0.1, 0.5, 0.4],
            [0.1, 0.2, 0.7],
            [0.2, 0.1, 0.7],
        ]
    )
    report = evaluate(y, p, three)
    counts = {"validation": {"normal": 3, "tumour": 2, "infarct": 2}}
    history = {"loss": [0.9], "val_loss": [1.0], "val_auc": [0.8]}
    result = TrainingResult(load_bundle(base_model), history, report, report, None, counts)

    lines = result_lines(result)

    assert lines[1] == (
        f"Validation: macro AUC {report.auc:.2f}, accuracy 0.86, macro sensitivity 0.89, "
        f"macro specificity 0.93, ECE {report.ece:.2f} ({report.ece_by_chance[0]:.2f} by chance, "
        f"95 % {report.ece_by_chance[1]:.2f}) (n = 7)"
    )
    # tumour's 0.7 and 0.5 against the others' 0.1, 0.3, 0.6, 0.2, 0.1: 9 of 10 pairs right
    assert lines[2] == (
        "Each class against the rest: normal AUC 1.00 (sensitivity 0.67), tumour AUC 0.90 "
        "(sensitivity 1.00), infarct AUC 1.00 (sensitivity 1.00)"
    )
    figures = result.figures()
    matrix = figures["confusion"].axes[0]
    assert [int(t.get_text().split("\n")[0]) for t in matrix.texts] == [2, 1, 0, 0, 2, 0, 0, 0, 2]
    images = {key: render_rgba(figures[key], 300, PLOT_HEIGHT) for key, _ in RESULT_FIGURES}
    widget._show_results(result, images)
    tabs = [widget.plots.tabText(i) for i in range(widget.plots.count())]
    assert tabs == ["Training", "ROC", "Confusion", "Reliability"]
    assert "Each class against the rest: normal AUC 1.00" in widget.summary.value


def from_scratch(widget: TrainWidget) -> None:
    widget.base.value = SCRATCH
    widget.grid.value = GRID[0]
    widget.net_width.value = 4


def run(qtbot, widget: TrainWidget) -> list[TrainingEvent]:
    """Train to the end (or the error); the progress events the widget received."""
    events: list[TrainingEvent] = []
    widget.relay.received.connect(events.append)
    assert widget.start() is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TRAIN_TIMEOUT_MS)
    return events


def saved(widget: TrainWidget) -> list[Path]:
    out = Path(widget.out.value)
    return sorted(out.iterdir()) if out.exists() else []


@pytest.mark.slow
def test_fine_tuning_reports_progress_saves_a_version_and_feeds_the_classifier(
    qtbot, viewer, widget, base_model
):
    widget.base.value = DISK
    widget.base_path.value = base_model / "bundle.json"

    events = run(qtbot, widget)

    kinds = [event.kind for event in events]
    assert kinds.count("load") == 12
    assert kinds.count("epoch") == 1
    assert kinds.count("batch") == events[-1].total  # every batch of the one epoch
    assert events[-1].kind == "epoch" and widget.history["loss"] == [events[-1].loss]

    def curves_show_the_epoch() -> bool:  # drawn in a background thread
        axes = (widget.curves.loss_axes, widget.curves.auc_axes)
        return all(
            a is not None and any(len(line.get_xdata()) == 1 for line in a.lines) for a in axes
        )

    qtbot.waitUntil(curves_show_the_epoch, timeout=TRAIN_TIMEOUT_MS)
    assert widget.curves.canvas.rgba.shape[0] == PLOT_HEIGHT

    (folder,) = saved(widget)
    assert folder.name == "tiny-v2"
    metadata = json.loads((folder / "bundle.json").read_text())
    assert metadata["parent_version"] == 1 and metadata["version"] == 2
    assert {"roc.png", "confusion.png", "reliability.png"} <= {p.name for p in folder.iterdir()}
    assert widget.result.bundle.path == folder
    tabs = [widget.plots.tabText(i) for i in range(widget.plots.count())]
    assert tabs == ["Training", "ROC", "Confusion", "Reliability"]
    roc = widget.plots.widget(1).rgba  # drawn by the worker in the theme's text colour
    assert roc.shape[0] == PLOT_HEIGHT and roc[..., 3].min() == 0  # a transparent background
    assert "Saved 'tiny' version 2" in widget.summary.value
    assert "Base model on the same cases" in widget.summary.value
    assert f"Verdict: {widget.result.comparison.message}" in widget.summary.value
    few = re.search(
        r"Warning: Too few validation cases to tell \(normal: (\d+), lesion: (\d+);",
        widget.summary.value,
    )
    assert few is not None and max(int(n) for n in few.groups()) < 10
    assert widget.train_button.enabled and not widget.cancel_button.enabled

    if not hasattr(viewer, "window"):
        pytest.skip("the classifier dock needs napari's window (OpenGL)")
    if widget.confirmation() is not None:  # a verdict other than "better": say yes
        answer(QMessageBox.StandardButton.Yes)
    widget.use_button.changed.emit(True)
    classify = next(w for w in viewer.window.dock_widgets.values() if isinstance(w, ClassifyWidget))
    assert Path(classify.model.value) == folder
    assert classify._bundles[classify.model.line_edit.value] is widget.result.bundle


@pytest.mark.slow
def test_cancel_stops_training_and_saves_nothing(qtbot, widget, notifications):
    from_scratch(widget)
    widget.epochs.value = 50

    def cancel_at_first_batch(event: TrainingEvent) -> None:
        if event.kind == "batch":
            widget.cancel_button.changed.emit(True)

    def cancel_in_the_training_thread(event: TrainingEvent) -> None:
        if event.kind == "batch":
            widget._cancel.set()

    # The first batch also cancels from inside the training thread, before it trains on: a
    # queued click could arrive epochs later on a busy machine.
    widget.relay.received.connect(cancel_in_the_training_thread, Qt.ConnectionType.DirectConnection)
    widget.relay.received.connect(cancel_at_first_batch)  # the button, on the Qt thread
    events = run(qtbot, widget)

    assert [event.kind for event in events].count("epoch") == 0  # not 50: stopped at once
    assert "cancelled" in notifications[-1].message
    assert saved(widget) == []
    assert widget.result is None and not widget.use_button.enabled
    assert widget.train_button.enabled and not widget.cancel_button.enabled


def test_one_class_only_is_explained(qtbot, widget, tmp_path, notifications):
    widget.library.value = make_library(tmp_path / "normals", [0] * 6)
    from_scratch(widget)

    run(qtbot, widget)

    assert "one class only" in notifications[-1].message
    assert notifications[-1].severity == "error"
    assert saved(widget) == []
    assert widget.train_button.enabled


def test_too_few_cases_is_explained(qtbot, widget, tmp_path, notifications):
    widget.library.value = make_library(tmp_path / "few", [0, 1, 0, 1])
    from_scratch(widget)

    run(qtbot, widget)

    assert "Too few cases" in notifications[-1].message
    assert saved(widget) == []


def test_a_missing_library_or_model_is_asked_for(widget, tmp_path, notifications):
    widget.library.value = tmp_path / "nowhere"
    assert widget.start() is None
    assert "case library" in notifications[-1].message

    widget.library.value = tmp_path
    widget.base.value = DISK
    assert widget.start() is None
    assert "model to fine-tune" in notifications[-1].message
    assert widget.worker is None
