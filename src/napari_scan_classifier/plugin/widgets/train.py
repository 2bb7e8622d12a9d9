"""The "Train model" dock widget: fine-tune a model (or train one from scratch) on the case
library, watch it learn, judge it on the validation cases, and hand it to the classifier.

The job is the core's :func:`~napari_scan_classifier.training.train`, run in a napari
``thread_worker``; its :class:`~napari_scan_classifier.training.TrainingEvent` reports reach the
Qt thread through a :class:`~.plots.Relay` and drive the dock's progress bar (per batch) and the
loss/AUC curves (per epoch). Cancel sets the ``threading.Event`` the core checks after every
batch. The core saves the new version (never overwriting one) with its ROC, confusion and
reliability plots as PNG only once training has finished, so a cancelled or failed run leaves
nothing behind.
"""

from __future__ import annotations

import math
import threading
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    PushButton,
    SpinBox,
)
from napari.utils.notifications import show_info
from napari.utils.theme import get_theme
from qtpy.QtWidgets import QMessageBox, QTabWidget
from superqt.utils import FunctionWorker

from napari_scan_classifier import outputs
from napari_scan_classifier.cases import default_root
from napari_scan_classifier.errors import ScanClassifierError
from napari_scan_classifier.evaluation import EvaluationReport, ece_text
from napari_scan_classifier.models import ARCHITECTURES, Bundle
from napari_scan_classifier.plugin.layout import scroll_when_docked
from napari_scan_classifier.plugin.widgets.classify import BUNDLE_FILTER, ClassifyWidget
from napari_scan_classifier.plugin.widgets.plots import (
    PLOT_HEIGHT,
    FigureImage,
    Relay,
    TrainingCurves,
    notify_error,
    render_rgba,
    run_in_thread,
    theme_figure,
)
from napari_scan_classifier.plugin.widgets.progress_bar import DockProgress
from napari_scan_classifier.results import resolve_bundle
from napari_scan_classifier.training import (
    DEFAULT_INTENSITY,
    IMBALANCE_METHODS,
    TrainingConfig,
    TrainingEvent,
    TrainingResult,
    train,
)

if TYPE_CHECKING:
    import napari

PLUGIN = "napari-scan-classifier"
CLASSIFY_WIDGET = "Classify scan"  # the classify widget's display name in napari.yaml
BUNDLED = "bundled"
DISK = "disk"
SCRATCH = "scratch"
IMBALANCE_TITLES = {
    "class_weight": "weight the loss by class",
    "balanced_sampling": "draw classes equally often",
    "none": "none",
}
RESULT_FIGURES = (("roc", "ROC"), ("confusion", "Confusion"), ("reliability", "Reliability"))


def default_models_dir() -> Path:
    """Where new model versions go unless the user chooses another folder (where the Classify
    dock's automatic choice finds them)."""
    return outputs.models_folder()


class TrainWidget(Container):
    """Base model, case library, training options, Train/Cancel, live curves and results."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self._cancel = threading.Event()
        self.progress_bar = DockProgress()
        self.relay = Relay()  # TrainingEvents from the worker, in the Qt thread
        self.relay.received.connect(self._on_event)
        self.history: dict[str, list[float]] = {}
        self.result: TrainingResult | None = None
        self.worker: FunctionWorker | None = None
        self.extend(self._model_widgets() + self._option_widgets())
        self._text_color = get_theme(viewer.theme).text.as_hex()
        self.curves = TrainingCurves(self._text_color)
        self.plots = QTabWidget()  # the curves, then the validation figures
        self.plots.addTab(self.curves.canvas, "Training")
        # Fixed: a tab page's figure would otherwise ask for its full size in inches.
        self.plots.setFixedHeight(PLOT_HEIGHT + self.plots.tabBar().sizeHint().height() + 6)
        self.plots.setVisible(False)
        self.summary = Label(value="")
        self.summary.native.setWordWrap(True)
        self.use_button = PushButton(text="Use this model in the classifier", enabled=False)
        widgets = (
            self.progress_bar.native,
            self.plots,
            self.summary.native,
            self.use_button.native,
        )
        for widget in widgets:
            self.native.layout().addWidget(widget)
        self.native.layout().addStretch(1)  # keep the rows together at the top
        self._connect()
        self._on_base_changed(self.base.value)
        scroll_when_docked(self)

    def _model_widgets(self) -> list[Any]:
        self.base = ComboBox(
            label="Start from",
            choices=[
                ("the bundled demo model", BUNDLED),
                ("a model on disk", DISK),
                ("scratch", SCRATCH),
            ],
        )
        self.base_path = FileEdit(label="Model", mode="r", filter=BUNDLE_FILTER)
        self.architecture = ComboBox(label="Architecture", choices=sorted(ARCHITECTURES))
        self.modality = ComboBox(label="Modality", choices=sorted(DEFAULT_INTENSITY))
        self.grid = SpinBox(label="Grid (voxels)", min=8, max=256, value=64)
        self.grid.tooltip = "Scans are resampled to a cube of this many voxels a side"
        self.net_width = SpinBox(label="Width", min=1, max=128, value=16)
        self.net_width.tooltip = "Filters of the first layer; the network doubles them per block"
        self.new_classes = CheckBox(text="Allow new classes (labels the base model lacks)")
        self.new_classes.tooltip = "Else a fine-tune whose cases bring unknown labels is refused"
        return [
            self.base,
            self.base_path,
            self.architecture,
            self.modality,
            self.grid,
            self.net_width,
            self.new_classes,
        ]

    def _option_widgets(self) -> list[Any]:
        self.library = FileEdit(label="Case library", mode="d", value=default_root())
        self.epochs = SpinBox(label="Epochs", min=1, max=1000, value=30)
        self.batch_size = SpinBox(label="Batch size", min=1, max=256, value=8)
        self.learning_rate = FloatSpinBox(
            label="Learning rate", min=1e-5, max=1.0, step=1e-5, value=1e-3
        )
        self.validation = FloatSpinBox(
            label="Validation share", min=0.05, max=0.5, step=0.05, value=0.2
        )
        self.validation.tooltip = "Cases kept aside (stratified) to judge the model"
        self.imbalance = ComboBox(
            label="Class imbalance",
            choices=[(IMBALANCE_TITLES[m], m) for m in IMBALANCE_METHODS],
        )
        self.augment = CheckBox(text="Augment (left-right flips, small rotations, noise)")
        self.augment.value = True
        self.out = FileEdit(label="Models folder", mode="d", value=default_models_dir())
        self.out.tooltip = "New model versions are saved here (never overwriting one)"
        self.train_button = PushButton(text="Train")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        buttons = Container(
            widgets=[self.train_button, self.cancel_button], layout="horizontal", labels=False
        )
        buttons.margins = (0, 0, 0, 0)
        return [
            self.library,
            self.epochs,
            self.batch_size,
            self.learning_rate,
            self.validation,
            self.imbalance,
            self.augment,
            self.out,
            buttons,
        ]

    def _connect(self) -> None:
        self.base.changed.connect(self._on_base_changed)
        self.train_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        self.use_button.changed.connect(self.use_in_classifier)

    def _on_base_changed(self, base: str) -> None:
        """Show only the settings that apply: a base model fixes grid, modality and network."""
        self.base_path.visible = base == DISK
        for widget in (self.architecture, self.modality, self.grid, self.net_width):
            widget.visible = base == SCRATCH
        self.new_classes.visible = base != SCRATCH

    # ------------------------------------------------------------------------------ running

    def config(self) -> TrainingConfig:
        """The settings as a TrainingConfig (TrainingError for settings it refuses)."""
        return TrainingConfig(
            architecture=self.architecture.value,
            input_shape=(self.grid.value,) * 3,
            modality=self.modality.value,
            width=self.net_width.value,
            epochs=self.epochs.value,
            batch_size=self.batch_size.value,
            learning_rate=self.learning_rate.value,
            validation_fraction=self.validation.value,
            imbalance=self.imbalance.value,
            augment=self.augment.value,
            allow_new_classes=self.new_classes.value,
        )

    def start(self) -> FunctionWorker | None:
        """Train in a worker thread; returns the started worker, or None (after telling the
        user why) when training cannot start."""
        if self.worker is not None:
            return None
        library = Path(self.library.value)
        if not library.is_dir():
            show_info("Choose a case library folder: annotate and save cases to train on.")
            return None
        if self.base.value == DISK and not self.base_path.line_edit.value.strip():
            show_info("Choose the model to fine-tune (its folder's bundle.json, or a .zip).")
            return None
        try:
            config = self.config()
        except ScanClassifierError as error:
            notify_error(error, "Training")
            return None
        self._cancel = threading.Event()
        base = {BUNDLED: "", DISK: self.base_path.line_edit.value.strip(), SCRATCH: None}
        job = partial(
            _train,
            library,
            config,
            base[self.base.value],
            Path(self.out.value),
            self.relay.report,
            self._cancel,
            (self.curves.canvas.render_width(), self._text_color),
        )
        worker = run_in_thread(job)
        worker.returned.connect(lambda outcome: self._show_results(*outcome))
        worker.errored.connect(lambda error: notify_error(error, "Training"))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.history = {"loss": [], "val_loss": [], "val_auc": []}
        self.curves.show(self.history, config.epochs)
        self._show_results(None)
        self.plots.setVisible(True)
        self._set_running(True)
        worker.start()
        return worker

    def cancel(self) -> None:
        """Stop training at the end of the current batch; nothing is saved."""
        self._cancel.set()
        self.cancel_button.enabled = False

    def _set_running(self, running: bool) -> None:
        self.train_button.enabled = not running
        self.cancel_button.enabled = running
        if running:
            self.progress_bar.start("Training: loading cases")
        else:
            self.progress_bar.stop()

    def _on_event(self, event: TrainingEvent) -> None:
        """Per batch: the progress bar's count; per epoch: its text and the curves (drawn in a
        background thread)."""
        if event.kind == "epoch":
            for key, value in (
                ("loss", event.loss),
                ("val_loss", event.val_loss),
                ("val_auc", event.val_auc),
            ):
                self.history[key].append(value)
            self.curves.show(self.history, event.epochs)
        if not self.progress_bar.running:  # a report that arrived after the end
            return
        done, total = event.batch, event.total
        if event.kind != "load":
            done, total = (event.epoch - 1) * event.total + event.batch, event.epochs * event.total
        self.progress_bar.update_to(done, total, f"Training: {_stage(event)}")

    def _on_finished(self) -> None:
        self.worker = None
        self._set_running(False)

    # ------------------------------------------------------------------------------ results

    def _show_results(
        self, result: TrainingResult | None, images: dict[str, Any] | None = None
    ) -> None:
        """The validation figures (drawn by the worker), notes and the new model's place;
        nothing when None."""
        self.result = result
        while self.plots.count() > 1:  # the curves stay
            self.plots.removeTab(1)
        self.use_button.enabled = result is not None
        self.summary.value = "" if result is None else "\n".join(result_lines(result))
        if result is None:
            return
        for key, title in RESULT_FIGURES:
            view = FigureImage(PLOT_HEIGHT)
            view.show_rgba(images[key])
            self.plots.addTab(view, title)
        self.plots.setCurrentIndex(1)

    def use_in_classifier(self) -> ClassifyWidget | None:
        """Make the classify widget (opened if needed) use the newly trained model."""
        if self.result is None:
            return None
        box = self.confirmation()
        if box is not None and box.exec() != QMessageBox.StandardButton.Yes:
            return None
        widget = self._classify_widget()
        widget.set_bundle(self.result.bundle)
        show_info(f"The classifier now uses {_model_name(self.result.bundle)}.")
        return widget

    def confirmation(self) -> QMessageBox | None:
        """The question asked before a new version replaces the classifier's model when it did
        not measure better than its base (None: nothing to ask)."""
        comparison = None if self.result is None else self.result.comparison
        if comparison is None or comparison.verdict == "better":
            return None
        box = QMessageBox(self.native)
        box.setIcon(QMessageBox.Icon.Warning)
        box.setWindowTitle("Use a model that did not measure better?")
        box.setText(
            f"Against its base on the same validation cases, {_model_name(self.result.bundle)} "
            f"measured: {comparison.verdict}. Use it in the classifier anyway?"
        )
        box.setInformativeText(comparison.message)
        box.setStandardButtons(QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No)
        box.setDefaultButton(QMessageBox.StandardButton.No)
        return box

    def _classify_widget(self) -> ClassifyWidget:
        for widget in self._viewer.window.dock_widgets.values():
            if isinstance(widget, ClassifyWidget):
                return widget
        _, widget = self._viewer.window.add_plugin_dock_widget(PLUGIN, CLASSIFY_WIDGET)
        return widget


def _train(
    library: Path,
    config: TrainingConfig,
    base: str | None,
    out: Path,
    report: Any,
    cancel: threading.Event,
    look: tuple[int, str],
) -> tuple[TrainingResult, dict[str, Any]]:
    """In the worker: load the base model (``""``: the bundled one; None: from scratch), train,
    save the new version under ``out`` and draw its validation figures (``look``: the width
    in pixels and the theme's text colour) so that the Qt thread only shows pixels."""
    bundle = None if base is None else resolve_bundle(base or None)
    result = train(library, config, base=bundle, out=out, progress=report, cancel=cancel)
    figures = result.figures()
    width, color = look
    images = {
        key: render_rgba(theme_figure(figures[key], color), width, PLOT_HEIGHT)
        for key, _ in RESULT_FIGURES
    }
    return result, images


def _stage(event: TrainingEvent) -> str:
    """What the progress bar says: the stage, not every batch (the bar counts those)."""
    if event.kind == "load":
        return "loading cases"
    return f"epoch {event.epoch}/{event.epochs}"


def result_lines(result: TrainingResult) -> list[str]:
    """What the user should read after training: where the model is, how it did, the notes."""
    lines = [f"Saved {_model_name(result.bundle)} in {result.bundle.path}."]
    lines.append(f"Validation: {_metrics(result.report)}")
    if len(result.report.class_names) > 2:
        lines.append(_per_class(result.report))
    if result.base_report is not None:
        lines.append(f"Base model on the same cases: {_metrics(result.base_report)}")
    for split, counts in result.class_counts.items():
        listing = ", ".join(f"{name} {n}" for name, n in counts.items())
        lines.append(f"{split.capitalize()} cases: {listing}")
    if result.comparison is not None:
        lines.append(f"Verdict: {result.comparison.message}")
    lines += [f"Warning: {warning}" for warning in result.warnings]
    lines += [f"Note: {note}" for note in result.notes]
    return lines


def _model_name(bundle: Bundle) -> str:
    return f"'{bundle.metadata.name}' version {bundle.metadata.version}"


def _metrics(report: EvaluationReport) -> str:
    values = report.to_dict()
    labels = {"auc": report.auc_label}
    if len(report.class_names) > 2:  # macro means over the classes
        labels.update(sensitivity="macro sensitivity", specificity="macro specificity")
    shown = ("auc", "accuracy", "sensitivity", "specificity")
    parts = [
        f"{labels.get(key, key)} " + ("n/a" if values[key] is None else f"{values[key]:.2f}")
        for key in shown
    ]
    return f"{', '.join(parts)}, ECE {ece_text(report, 2)} (n = {values['n']})"


def _per_class(report: EvaluationReport) -> str:
    """``"Each class against the rest: normal AUC 0.97 (sensitivity 0.90), ..."``."""
    parts = [
        f"{name} AUC {_short(m.auc)} (sensitivity {_short(m.sensitivity)})"
        for name, m in report.per_class.items()
    ]
    return f"Each class against the rest: {', '.join(parts)}"


def _short(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else "n/a"
