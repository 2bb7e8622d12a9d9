"""The "Classify scan" dock widget: classify the chosen scan with a model bundle, show the class
probabilities with their uncertainty, and lay the saliency map over the anatomy.

The map explains the predicted class unless "Explain" names another of the model's classes;
choosing one after a classification explains that class of the same prediction again (only the
map is recomputed), so a three-class model's evidence for each class can be compared.

The widget only wires things together. The job is the core's
:func:`~napari_scan_classifier.results.classify_scan`, run in a napari ``thread_worker`` (the Qt
thread never waits on a model); the worker is a generator that yields the core's (done, total,
message) reports, which drive the dock's own progress bar. Cancel sets the ``threading.Event``
the core checks between steps. Errors the user can act on (no scan, a bad bundle, NaN voxels)
become one line in napari's notifications; the result goes into the scan layer's metadata and a
saliency layer aligned by plugin/layers.py, both updated in place when the scan is classified
again.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, PushButton, SpinBox
from napari.layers import Image, Layer
from napari.utils.notifications import show_error, show_info, show_warning
from napari.utils.theme import get_theme
from qtpy.QtWidgets import QSizePolicy
from superqt.utils import GeneratorWorker

from napari_scan_classifier.choice import (
    Choice,
    ScanIdentity,
    choose,
    installed_models,
)
from napari_scan_classifier.errors import CancelledError, ScanClassifierError
from napari_scan_classifier.models import Bundle
from napari_scan_classifier.plugin.glyphs import warm_glyphs
from napari_scan_classifier.plugin.layers import (
    find_result_layer,
    is_result_layer,
    map_to_layer_data,
    put_result_layer,
    remove_result_layer,
    scan_volume,
    shown_frame,
)
from napari_scan_classifier.plugin.layout import scroll_when_docked
from napari_scan_classifier.plugin.widgets.progress_bar import DockProgress
from napari_scan_classifier.plugin.widgets.result_chart import ResultChart
from napari_scan_classifier.plugin.widgets.workers import (
    MapView,
    Report,
    classification,
    explanation,
    identification,
)
from napari_scan_classifier.results import (
    DEFAULT_PASSES,
    SALIENCY_METHODS,
    SALIENCY_TITLES,
    ScanResult,
    frame_fields,
    ood_lines,
    slice_text,
    summary_lines,
)
from napari_scan_classifier.saliency import method_key
from napari_scan_classifier.volume import Volume

if TYPE_CHECKING:
    import napari
    from napari.components.overlays import TextOverlay

CLASSIFICATION_KEY = "classification"  # scan layer metadata: the latest result, JSON types
SCAN_NAME_KEY = "scan"  # result layer metadata: the name of the scan it was made from
PEAK_KEY = "saliency_peak_mm"  # saliency layer metadata: world (z, y, x) of its maximum
SALIENCY_KIND = "saliency"
BUNDLE_FILTER = "Model bundles (bundle.json *.zip)"
BANNER_STYLE = "background-color: #8a2a12; color: white; padding: 6px; border-radius: 3px;"
PREDICTED_CHOICE = "the predicted class"

_LOG = logging.getLogger(__name__)


IDENTIFYING = "Telling the scan's modality and body region…"  # while a worker reads the scan


class ClassifyWidget(Container):
    """Scan and model pickers, options, Classify/Cancel, and the result of the chosen scan."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = viewer
        self._bundles: dict[str, Bundle] = {}  # by path: bundles are immutable, load once
        self._cancel_event = threading.Event()
        self.progress_bar = DockProgress()
        self._owns_overlay = False
        self.worker: GeneratorWorker | None = None

        self.scan = ComboBox(label="Scan", choices=self._scan_choices, nullable=True)
        self.model = FileEdit(label="Model", mode="r", filter=BUNDLE_FILTER)
        self.model.line_edit.native.setPlaceholderText("chosen by the scan")
        self.model.tooltip = (
            "A bundle folder (pick its bundle.json), a .zip or a shipped model's name; empty: "
            "the shipped or installed model made for the scan's modality and body region"
        )
        self.choice = Label(value="")  # which model the scan chooses, and why
        self.choice.native.setWordWrap(True)
        self.choice.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.saliency = ComboBox(
            label="Saliency",
            choices=[(SALIENCY_TITLES[m], m) for m in SALIENCY_METHODS],
            value="default",
        )
        self.explain = ComboBox(label="Explain", choices=self._class_choices, value=None)
        self.explain.tooltip = "The class the saliency map explains (default: the predicted one)"
        self.passes = SpinBox(label="Uncertainty passes", min=0, max=100, value=DEFAULT_PASSES)
        self.passes.tooltip = "Monte Carlo dropout samples for the ± spread (0: none)"
        self.check = CheckBox(text="Check the saliency map (faithfulness)", value=True)
        self.check.tooltip = "Remove regions by the map's ranking and follow the probability"
        self.run_button = PushButton(text="Classify")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.banner = Label(value="")
        self.banner.native.setWordWrap(True)
        self.banner.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.banner.native.setStyleSheet(BANNER_STYLE)
        self.banner.visible = False
        self.send_button = PushButton(text="Send to PACS", enabled=False)
        self.send_button.tooltip = "Store the report and the saliency map beside the scan's series"
        self._sendable: weakref.WeakKeyDictionary[Layer, tuple] = weakref.WeakKeyDictionary()
        self._identities: weakref.WeakKeyDictionary[Layer, ScanIdentity | ScanClassifierError] = (
            weakref.WeakKeyDictionary()
        )
        self._identifying: weakref.WeakSet[Layer] = weakref.WeakSet()
        self._closed = False  # an identification may return after the dock is gone
        self.native.destroyed.connect(self._on_destroyed)
        self.summary = Label(value="")
        self.summary.native.setWordWrap(True)
        self.summary.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.chart = ResultChart(get_theme(viewer.theme).text.as_hex())
        self.goto_button = PushButton(text="Go to the most salient slice", visible=False)
        self.goto_button.tooltip = "Show the slice where the saliency map peaks, map visible"
        buttons = Container(
            widgets=[self.run_button, self.cancel_button, self.send_button],
            layout="horizontal",
            labels=False,
        )
        buttons.margins = (0, 0, 0, 0)
        self.extend(
            [
                self.scan,
                self.model,
                self.choice,
                self.saliency,
                self.explain,
                self.passes,
                self.check,
                buttons,
            ]
        )
        views = (
            self.progress_bar.native,
            self.goto_button.native,
            self.banner.native,
            self.summary.native,
            self.chart.canvas,
        )
        for view in views:  # full width, no label column
            self.native.layout().addWidget(view)
        self._connect()
        self._follow_active()
        scroll_when_docked(self)
        self._show_stored()
        self.show_choice()
        self._glyphs = warm_glyphs(viewer)  # the prediction's text then draws without a freeze

    def _connect(self) -> None:
        layers = self._viewer.layers
        for event in (
            layers.events.inserted,
            layers.events.removed,
            layers.events.reordered,
            layers.events.renamed,
        ):
            event.connect(self._refresh_scans)
        layers.selection.events.active.connect(self._follow_active)
        self._viewer.dims.events.current_step.connect(self._show_slice)
        self.scan.changed.connect(self._show_stored)
        self.scan.changed.connect(self.show_choice)
        self.model.changed.connect(self.show_choice)
        self.run_button.changed.connect(self.classify)
        self.cancel_button.changed.connect(self.cancel)
        self.goto_button.changed.connect(self.go_to_salient_slice)
        self.send_button.changed.connect(self.send)
        self.explain.changed.connect(self.explain_again)

    def _scan_choices(self, _: Any = None) -> list[tuple[str, Layer]]:
        return [
            (layer.name, layer)
            for layer in self._viewer.layers
            if isinstance(layer, Image) and not is_result_layer(layer)
        ]

    def _class_choices(self, _: Any = None) -> list[tuple[str, str | None]]:
        """The predicted class, then the classes of the model that classified the chosen scan
        (or of the model loaded for the field, before any classification)."""
        layer = self.scan.value
        result = layer.metadata.get(CLASSIFICATION_KEY) if layer is not None else None
        bundle = self._bundles.get(self.model.line_edit.value.strip())
        if result:
            classes = list(result["probabilities"])
        else:
            classes = [] if bundle is None else list(bundle.metadata.classes)
        return [(PREDICTED_CHOICE, None)] + [(name, name) for name in classes]

    def _refresh_classes(self) -> None:
        """New class choices, keeping the chosen class where the model still has it."""
        chosen = self.explain.value
        with self.explain.changed.blocked():
            self.explain.reset_choices()
            names = [value for _, value in self._class_choices()]
            self.explain.value = chosen if chosen in names else None

    def _refresh_scans(self) -> None:
        """New choices, keeping the chosen scan (magicgui would lose it when it was renamed)."""
        chosen = self.scan.value
        self.scan.reset_choices()
        if chosen is not None and chosen in self._viewer.layers:
            self.scan.value = chosen

    def _follow_active(self) -> None:
        """Pick the active layer when it is a scan, so the default is what the user looks at."""
        self._refresh_scans()
        active = self._viewer.layers.selection.active
        if isinstance(active, Image) and not is_result_layer(active):
            self.scan.value = active  # shows its stored result, if the choice changed

    # ------------------------------------------------------------------------------ running

    def show_choice(self) -> Choice | None:
        """Say which model the chosen scan chooses and why, or that the model field overrides
        it; returns the scan's choice (None without a scan, or while the scan is identified).

        Identifying a scan reads its voxels (a few hundred ms for a 512x512x300 CT), so it runs
        in a worker once per layer; the choice among the installed models is remade each time,
        as models come and go."""
        layer = self.scan.value
        given = self.model.line_edit.value.strip()
        if layer is None:
            self.choice.value = "" if given else "The model will be chosen by the scan."
            return None
        identity = self._identities.get(layer)
        if identity is None:
            try:
                volume = scan_volume(layer)
            except ScanClassifierError as error:
                self.choice.value = f"No model chosen: {error}"
                return None
            self.choice.value = IDENTIFYING
            self._identify(layer, volume)
            return None
        try:
            if isinstance(identity, ScanClassifierError):
                raise identity
            choice = choose(identity, installed_models())
        except ScanClassifierError as error:
            self.choice.value = f"No model chosen: {error}"
            return None
        if given:
            self.choice.value = f"Given model overrides the scan's choice ({choice.reason})."
        elif choice.model is None:
            self.choice.value = f"No model: {choice.explanation()}"
        else:
            self.choice.value = f"Chosen by the scan: {choice.explanation()}"
        return choice

    def _identify(self, layer: Layer, volume: Volume) -> None:
        if layer in self._identifying:
            return
        self._identifying.add(layer)
        worker = identification(volume)
        worker.returned.connect(partial(self._on_identified, layer))
        worker.start()

    def _on_destroyed(self) -> None:
        self._closed = True

    def _on_identified(self, layer: Layer, identity: ScanIdentity | ScanClassifierError) -> None:
        self._identifying.discard(layer)
        self._identities[layer] = identity
        if not self._closed and self.scan.value is layer:
            self.show_choice()

    def classify(self) -> GeneratorWorker | None:
        """Classify the chosen scan in a worker thread; returns the started worker, or None
        (after telling the user why) when there is nothing to classify."""
        layer = self.scan.value
        if self.worker is not None:
            return None
        if layer is None:
            show_info("Open a CT or MR scan (an image layer) to classify it.")
            return None
        try:
            volume = shown_frame(scan_volume(layer), layer, self._viewer.dims.point)
        except ScanClassifierError as error:
            show_error(str(error))
            return None
        self._cancel_event = threading.Event()
        options = {
            "saliency": self.saliency.value,
            "passes": self.passes.value,
            "faithfulness": self.check.value and self.saliency.value != "none",
            "saliency_class": self.explain.value,
        }
        model = self.model.line_edit.value.strip()
        worker = classification(volume, model, dict(self._bundles), options, self._cancel_event)
        return self._start(
            worker, partial(self._on_result, layer, volume), f"Classifying {layer.name}"
        )

    def explain_again(self) -> GeneratorWorker | None:
        """Recompute the chosen scan's map for the class now chosen in "Explain" (the prediction
        stays); returns the started worker, or None when there is no result to explain again
        or its map already shows that class."""
        layer = self.scan.value
        if self.worker is not None or layer is None or layer not in self._sendable:
            return None
        volume, result, bundle = self._sendable[layer]
        target = self.explain.value or result.prediction.predicted_class
        shown = result.saliency
        if self.saliency.value == "none" or (shown is not None and shown.target_class == target):
            return None
        self._cancel_event = threading.Event()
        options = {
            "method": self.saliency.value,
            "faithfulness": self.check.value,
            "saliency_class": target,
        }
        worker = explanation(volume, bundle, result.prediction, options, self._cancel_event)
        return self._start(
            worker,
            partial(self._on_explained, layer, volume, bundle),
            f"Explaining {target} in {layer.name}",
        )

    def _start(
        self, worker: GeneratorWorker, on_returned: Callable[[Any], None], status: str
    ) -> GeneratorWorker:
        """Wire a worker's progress, result, errors and cancel to the dock, then run it."""
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(on_returned)
        worker.errored.connect(self._on_error)
        worker.aborted.connect(lambda: show_info("Classification cancelled."))
        worker.finished.connect(self._on_finished)
        self._set_running(True, status)
        self.worker = worker
        worker.start()
        return worker

    def _on_explained(
        self, layer: Layer, volume: Volume, bundle: Bundle, outcome: tuple[ScanResult, Any]
    ) -> None:
        result, view = outcome
        if layer not in self._viewer.layers:
            return
        data = {**layer.metadata.get(CLASSIFICATION_KEY, {}), "saliency": None}
        data.update(result.to_dict())
        layer.metadata[CLASSIFICATION_KEY] = data
        self._sendable[layer] = (volume, result, bundle)
        self._show_saliency(layer, volume, result, data, view)

    def cancel(self) -> None:
        """Ask the running classification to stop at its next step."""
        self._cancel_event.set()
        self.cancel_button.enabled = False

    def _set_running(self, running: bool, description: str = "") -> None:
        self.run_button.enabled = not running
        self.cancel_button.enabled = running
        if running:
            self.progress_bar.start(description)
        else:
            self.progress_bar.stop()

    def _on_progress(self, report: Report) -> None:
        done, total, message = report
        if not self.progress_bar.running:  # a report that arrived after the end
            return
        self.summary.value = f"Classifying: {message}…"
        self.progress_bar.update_to(done, total)

    def _on_result(
        self, layer: Layer, volume: Volume, outcome: tuple[str, Bundle, Any, Any, Choice | None]
    ) -> None:
        model, bundle, result, view, choice = outcome
        self._bundles[model] = bundle
        if layer not in self._viewer.layers:
            show_info(f"'{layer.name}' was closed before its classification finished.")
            return
        data = {**result.to_dict(), **frame_fields(volume)}
        if choice is not None:
            data["model_choice"] = choice.to_dict()
        layer.metadata[CLASSIFICATION_KEY] = data
        self._sendable[layer] = (volume, result, bundle)
        self._show_saliency(layer, volume, result, data, view)
        if data["modality_warning"]:
            show_warning(f"{layer.name}: {data['modality_warning']}")

    def _show_saliency(
        self,
        layer: Layer,
        volume: Volume,
        result: ScanResult,
        data: dict[str, Any],
        view: MapView | None,
    ) -> None:
        """Add or update (in place) the scan's saliency layer: a short name, the scan's name in
        its metadata, and where the map peaks and tops out (found by the worker: no scan of the
        map here)."""
        if result.saliency is None:
            remove_result_layer(self._viewer.layers, layer, SALIENCY_KIND)
            return
        method = data["saliency"]["method"]
        title = SALIENCY_TITLES.get(method_key(method), method)
        name = f"{title} · {data['saliency']['target_class']}"
        if data.get("frame") is not None:
            name += f" · frame {data['frame']}"
        peak, upper = (None, 1.0) if view is None else view
        metadata = {CLASSIFICATION_KEY: data, SCAN_NAME_KEY: layer.name, PEAK_KEY: peak}
        layer_data = map_to_layer_data(volume, result.saliency.values, name, metadata, upper)
        put_result_layer(self._viewer.layers, layer, SALIENCY_KIND, layer_data)

    def _on_error(self, error: BaseException) -> None:
        if isinstance(error, CancelledError):
            show_info("Classification cancelled.")
        elif isinstance(error, ScanClassifierError):
            show_error(str(error))
        else:  # a bug, not the user's input: one line here, the traceback in the log
            show_error(f"Classification failed unexpectedly: {type(error).__name__}: {error}")
            _LOG.error("classification failed", exc_info=error)

    def _on_finished(self) -> None:
        self.worker = None
        self._set_running(False)
        self._show_stored()

    def _can_send(self, layer: Layer | None) -> bool:
        from napari_scan_classifier.plugin.widgets.pacs import PACS_SOURCES

        return layer is not None and layer in self._sendable and layer in PACS_SOURCES

    def send(self) -> Any:
        """Send the chosen scan's latest result to the PACS it was opened from (a worker)."""
        from napari_scan_classifier.plugin.widgets.pacs import send_to_pacs

        layer = self.scan.value
        if layer is None or layer not in self._sendable:
            show_info("Classify the scan first; then its result can be sent.")
            return None
        return send_to_pacs(layer, *self._sendable[layer])

    # ----------------------------------------------------------------------------- showing

    def _show_stored(self) -> None:
        """Show the chosen scan's latest result (or nothing) in the dock and the overlay."""
        layer = self.scan.value
        result = layer.metadata.get(CLASSIFICATION_KEY) if layer is not None else None
        lines = summary_lines(result, probabilities=False, banner=False) if result else []
        warning = ood_lines(result) if result else []
        self.banner.value = "\n".join(warning)
        self.banner.visible = bool(warning)
        self.send_button.enabled = self._can_send(layer)
        self.summary.value = "\n".join(lines)
        self.goto_button.visible = self._salient_point() is not None
        self.chart.show(result)
        self._show_slice()
        self._refresh_classes()

    def _salient_point(self) -> tuple[float, ...] | None:
        """World mm (z, y, x) of the chosen scan's saliency peak, if it has a map."""
        layer = self.scan.value
        if layer is None or layer not in self._viewer.layers:
            return None
        saliency = find_result_layer(self._viewer.layers, layer, SALIENCY_KIND)
        return None if saliency is None else saliency.metadata.get(PEAK_KEY)

    def go_to_salient_slice(self) -> tuple[float, ...] | None:
        """Move the viewer to the slice where the chosen scan's saliency map peaks, with the map
        visible; returns the world point (mm), or None when the scan has no map."""
        point = self._salient_point()
        if point is None:
            return None
        saliency = find_result_layer(self._viewer.layers, self.scan.value, SALIENCY_KIND)
        saliency.visible = True
        dims = self._viewer.dims
        dims.set_point(range(dims.ndim - 3, dims.ndim), point)
        return point

    def _show_slice(self) -> None:
        """On the canvas, the per-slice scores of the slice on screen (with the chart's cursor
        there), or the prediction where the model scores the whole scan."""
        layer = self.scan.value
        result = layer.metadata.get(CLASSIFICATION_KEY) if layer is not None else None
        k = self._slice_on_screen(layer) if result and result.get("per_slice") else None
        text = slice_text(result, k) if result and k is not None else None
        if result and text is None:
            text = prediction_text(result)
        self.chart.move_cursor(k)
        overlay = _text_overlay(self._viewer)
        if text is not None:
            overlay.text, overlay.visible = text, True
            self._owns_overlay = True
        elif self._owns_overlay:
            overlay.text, overlay.visible = "", False
            self._owns_overlay = False

    def _slice_on_screen(self, layer: Layer) -> int | None:
        """The scan's slice (as acquired, 0-based) at the viewer's current position."""
        point = np.asarray(self._viewer.dims.point, dtype=float)[-3:]
        if point.size < 3 or layer not in self._viewer.layers:
            return None
        return int(np.round(scan_volume(layer).world_to_index(point)[0, 0]))

    def set_bundle(self, bundle: Bundle) -> None:
        """Classify with ``bundle`` from now on (e.g. a model just trained: saved, so it has a
        path), without loading it again."""
        self._bundles[str(bundle.path)] = bundle
        self.model.value = bundle.path


def prediction_text(result: dict[str, Any]) -> str:
    """``"Predicted: lesion (p = 0.85)"``: the answer, on the canvas where the user looks."""
    predicted = result["predicted_class"]
    return f"Predicted: {predicted} (p = {result['probabilities'][predicted]:.2f})"


def _text_overlay(viewer: napari.viewer.Viewer) -> TextOverlay:
    """The canvas text overlay (``viewer.canvas`` since napari 0.9; ``text_overlay`` before)."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.overlays.text if canvas is not None else viewer.text_overlay
