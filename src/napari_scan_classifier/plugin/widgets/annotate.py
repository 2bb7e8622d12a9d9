"""The "Annotate" dock widget: label the scan on screen, paint its lesion, keep it in the case
library, and find the scans most worth labelling next.

Three parts, each thin over the core:

- **Annotate**: a class label (the model's and the library's classes, or a new one), an optional
  lesion mask painted in a labels layer on the scan layer's grid (mapped back to the scan as
  acquired by plugin/layers.py), and *Save case*, which adds the scan with the last
  classification stored on its layer to :class:`~napari_scan_classifier.cases.CaseLibrary`.
- **Case library**: cases per class and a list of cases; clicking one opens it (scan and mask).
- **Most informative first**: :func:`~napari_scan_classifier.active_learning.rank_by_uncertainty`
  on the open scans or a folder; clicking an entry selects or opens that scan.

Disk and model work runs in worker threads; what the user can fix (no label, a mask on another
grid, a read-only or full library, a duplicate) is checked before anything is written and shown
as one line in napari's notifications. The library itself writes atomically.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, LineEdit, PushButton, SpinBox
from napari.layers import Image, Labels, Layer
from napari.utils import progress
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QListWidget, QListWidgetItem, QSizePolicy
from superqt.utils import FunctionWorker

from napari_scan_classifier.active_learning import (
    DEFAULT_PASSES,
    MEASURE_TITLES,
    MEASURES,
    Ranked,
    load_ranked,
    rank_by_uncertainty,
)
from napari_scan_classifier.cases import CaseLibrary, CaseRecord, clean_label, default_root
from napari_scan_classifier.errors import ScanClassifierError
from napari_scan_classifier.models import Bundle
from napari_scan_classifier.plugin.layers import (
    empty_mask_layer_data,
    find_result_layer,
    is_result_layer,
    mask_on_acquired_grid,
    mask_to_layer_data,
    put_result_layer,
    scan_volume,
    volume_to_layer_data,
)
from napari_scan_classifier.plugin.widgets.classify import BUNDLE_FILTER, CLASSIFICATION_KEY
from napari_scan_classifier.plugin.widgets.plots import Relay, notify_error, run_in_thread
from napari_scan_classifier.results import resolve_bundle
from napari_scan_classifier.volume import Volume

if TYPE_CHECKING:
    import napari

MASK_KIND = "lesion_mask"
CASE_KEY = "scan_classifier_case"  # image layer metadata: the library case it shows
OPEN_LAYERS = "layers"
FOLDER = "folder"
LIST_HEIGHT = 150  # px
DATA_ROLE = Qt.ItemDataRole.UserRole  # where a list item keeps its case id or ranking index
# What a case keeps of a classification: enough to compare label and model later, compact.
PREDICTION_KEYS = ("model", "predicted_class", "probabilities")
UNCERTAINTY_KEYS = ("std", "predictive_entropy", "mutual_information", "method", "passes")


class AnnotateWidget(Container):
    """Label, mask and save the chosen scan; browse the case library; rank scans to label."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)
        self._viewer = viewer
        self._bundles: dict[str, Bundle] = {}  # ranking models by path, loaded once
        self._ranking: list[tuple[Ranked, Layer | None]] = []
        self._cancel = threading.Event()
        self._progress: progress | None = None
        self._relay = Relay()
        self._relay.received.connect(self._on_progress)
        self.worker: FunctionWorker | None = None
        library = self._library_section()  # first: the label choices read the library
        self.extend([self._annotate_section(), library, self._ranking_section()])
        self.native.layout().addStretch(1)  # keep the rows together at the top
        self._connect()
        self._follow_active()
        self.show_library()

    # ------------------------------------------------------------------------------ layout

    def _annotate_section(self) -> Container:
        self.scan = ComboBox(label="Scan", choices=self._scan_choices, nullable=True)
        self.class_label = ComboBox(label="Label", choices=self._label_choices, nullable=True)
        self.new_label = LineEdit(label="New class")
        self.new_label.native.setPlaceholderText("or type a new class")
        self.mask = ComboBox(label="Lesion mask", choices=self._mask_choices, nullable=True)
        self.add_mask_button = PushButton(text="Add lesion mask")
        self.save_button = PushButton(text="Save case")
        buttons = _row(self.add_mask_button, self.save_button)
        widgets = [self.scan, self.class_label, self.new_label, self.mask, buttons]
        return _section("Annotate", widgets)

    def _library_section(self) -> Container:
        self.library = FileEdit(label="Library", mode="d", value=default_root())
        self.counts = Label(value="")
        self.counts.native.setWordWrap(True)
        self.counts.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.cases = _list_widget("Click a case to open its scan and mask")
        section = _section("Case library", [self.library, self.counts])
        section.native.layout().addWidget(self.cases)
        return section

    def _ranking_section(self) -> Container:
        self.source = ComboBox(
            label="Rank",
            choices=[("the open scans", OPEN_LAYERS), ("scans in a folder", FOLDER)],
        )
        self.folder = FileEdit(label="Folder", mode="d", visible=False)
        self.model = FileEdit(label="Model", mode="r", filter=BUNDLE_FILTER)
        self.model.line_edit.native.setPlaceholderText("bundled demo model")
        self.measure = ComboBox(label="Measure", choices=[(MEASURE_TITLES[m], m) for m in MEASURES])
        self.passes = SpinBox(label="Dropout passes", min=2, max=100, value=DEFAULT_PASSES)
        self.rank_button = PushButton(text="Rank by uncertainty")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.ranking = _list_widget("Most uncertain first: click to select or open the scan")
        widgets = [
            self.source,
            self.folder,
            self.model,
            self.measure,
            self.passes,
            _row(self.rank_button, self.cancel_button),
        ]
        section = _section("Most informative first", widgets)
        section.native.layout().addWidget(self.ranking)
        return section

    def _connect(self) -> None:
        layers = self._viewer.layers
        for event in (layers.events.inserted, layers.events.removed, layers.events.reordered):
            event.connect(self._reset_layer_choices)
        layers.selection.events.active.connect(self._follow_active)
        self.scan.changed.connect(self._on_scan_changed)
        self.add_mask_button.changed.connect(self.add_mask)
        self.save_button.changed.connect(self.save_case)
        self.library.changed.connect(self.show_library)
        self.cases.itemClicked.connect(lambda item: self.open_case(item.data(DATA_ROLE)))
        self.source.changed.connect(self._on_source_changed)
        self.rank_button.changed.connect(self.rank)
        self.cancel_button.changed.connect(self.cancel)
        self.ranking.itemClicked.connect(lambda item: self.show_ranked(item.data(DATA_ROLE)))

    def _on_source_changed(self, source: str) -> None:
        self.folder.visible = source == FOLDER

    # ------------------------------------------------------------------------------ choices

    def _scan_choices(self, _: Any = None) -> list[tuple[str, Layer]]:
        return [(layer.name, layer) for layer in self._viewer.layers if _is_scan(layer)]

    def _mask_choices(self, _: Any = None) -> list[tuple[str, Layer]]:
        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Labels)]

    def _label_choices(self, _: Any = None) -> list[str]:
        """The chosen scan's model classes, the library's classes and the ranking model's."""
        names: list[str] = []
        result = self._classification()
        if result:
            names += list(result.get("probabilities", {}))
        names += list(self._library_counts())
        for bundle in self._bundles.values():
            names += bundle.metadata.classes
        return list(dict.fromkeys(names))

    def _reset_layer_choices(self) -> None:
        self.scan.reset_choices()
        self.mask.reset_choices()
        linked = self._linked_mask()
        if self.mask.value is None and linked is not None:
            self.mask.value = linked

    def _linked_mask(self) -> Layer | None:
        """The lesion mask made for the chosen scan, if any."""
        layer = self.scan.value
        return None if layer is None else find_result_layer(self._viewer.layers, layer, MASK_KIND)

    def _follow_active(self) -> None:
        """Pick the active layer when it is a scan, so the default is what the user looks at."""
        self._reset_layer_choices()
        active = self._viewer.layers.selection.active
        if _is_scan(active):
            self.scan.value = active

    def _on_scan_changed(self) -> None:
        """Offer the scan's own mask and preselect the model's prediction as its label."""
        self.class_label.reset_choices()
        self.mask.value = self._linked_mask()
        result = self._classification()
        if result and result.get("predicted_class") in self.class_label.choices:
            self.class_label.value = result["predicted_class"]

    def _classification(self) -> dict[str, Any] | None:
        layer = self.scan.value
        return None if layer is None else layer.metadata.get(CLASSIFICATION_KEY)

    # ------------------------------------------------------------------------------ annotate

    def add_mask(self) -> Labels | None:
        """A labels layer on the chosen scan's grid, linked to it, selected for painting (the
        existing one when the scan has one)."""
        layer = self.scan.value
        if layer is None:
            show_info("Open a scan (an image layer) to paint its lesion.")
            return None
        mask = self._linked_mask()
        if mask is None:
            try:
                data = empty_mask_layer_data(layer, f"{layer.name} · lesion mask")
            except ScanClassifierError as error:
                notify_error(error, "Adding a mask")
                return None
            mask = put_result_layer(self._viewer.layers, layer, MASK_KIND, data)
        self._viewer.layers.selection.active = mask
        mask.mode = "paint"
        self.mask.value = mask
        return mask

    def chosen_label(self) -> str:
        """The typed new class, else the chosen one ('' for none)."""
        return self.new_label.value.strip() or (self.class_label.value or "")

    def save_case(self) -> FunctionWorker | None:
        """Check the label, mask and library, then add the case in a worker thread; returns the
        started worker, or None (after telling the user why) when nothing is to be saved."""
        layer = self.scan.value
        if layer is None:
            show_info("Open a scan (an image layer) to save it as a case.")
            return None
        try:
            label = clean_label(self.chosen_label())
            volume = scan_volume(layer)
            mask = self._mask_for(volume)
            library = CaseLibrary(self.library.value)
        except ScanClassifierError as error:
            notify_error(error, "Saving the case")
            return None
        prediction = case_prediction(self._classification())
        job = partial(library.add, volume, label, mask=mask, prediction=prediction)
        return self._start(job, self._on_saved, "Saving the case", f"Saving '{layer.name}'")

    def _mask_for(self, volume: Volume) -> np.ndarray | None:
        """The chosen mask on the scan's acquired grid; None when nothing is painted in it."""
        if self.mask.value is None:
            return None
        mask = mask_on_acquired_grid(self.mask.value, volume)
        return mask if mask.any() else None

    def _on_saved(self, record: CaseRecord) -> None:
        self.new_label.value = ""
        self.show_library()
        self.class_label.value = record.label
        mask = "with its lesion mask" if record.has_mask else "without a mask"
        show_info(f"Saved as case {record.case_id[:8]} '{record.label}' {mask}.")

    # ------------------------------------------------------------------------------ library

    def show_library(self) -> None:
        """Cases per class and the list of cases of the chosen library folder."""
        self.cases.clear()
        root = Path(self.library.value)
        if not root.is_dir():
            self.counts.value = "No cases yet: the folder is made when the first case is saved."
            self.class_label.reset_choices()
            return
        try:
            records = CaseLibrary(root).list()
        except ScanClassifierError as error:
            self.counts.value = str(error)
            return
        counts = dict(sorted(Counter(record.label for record in records).items()))
        listing = ", ".join(f"{label} {n}" for label, n in counts.items())
        self.counts.value = f"{len(records)} cases: {listing}" if records else "No cases yet."
        for record in reversed(records):  # newest first
            item = QListWidgetItem(_case_text(record))
            item.setData(DATA_ROLE, record.case_id)
            self.cases.addItem(item)
        self.class_label.reset_choices()

    def _library_counts(self) -> dict[str, int]:
        root = Path(self.library.value)
        if not root.is_dir():
            return {}
        try:
            return CaseLibrary(root).counts()
        except ScanClassifierError:
            return {}

    def open_case(self, case_id: str) -> FunctionWorker | None:
        """Open a case's scan and mask as layers (select them when already open)."""
        for layer in self._viewer.layers:
            if layer.metadata.get(CASE_KEY) == case_id:
                self._viewer.layers.selection.active = layer
                return None
        try:
            library = CaseLibrary(self.library.value)
        except ScanClassifierError as error:
            notify_error(error, "Opening the case")
            return None
        job = partial(_load_case, library, case_id)
        return self._start(
            job, self._on_case_loaded, "Opening the case", f"Opening case {case_id[:8]}"
        )

    def _on_case_loaded(self, loaded: tuple[CaseRecord, Volume, np.ndarray | None]) -> None:
        record, volume, mask = loaded
        scan = self._add_scan(volume, f"case {record.case_id[:8]} · {record.label}")
        scan.metadata[CASE_KEY] = record.case_id
        if mask is not None:
            data = mask_to_layer_data(volume, mask, f"{scan.name} · lesion mask")
            put_result_layer(self._viewer.layers, scan, MASK_KIND, data)
        self._viewer.layers.selection.active = scan

    def _add_scan(self, volume: Volume, name: str) -> Layer:
        data, kwargs, layer_type = volume_to_layer_data(volume)
        layer = Layer.create(data, {**kwargs, "name": name}, layer_type)
        self._viewer.layers.append(layer)
        return layer

    # ------------------------------------------------------------------------------ ranking

    def rank(self) -> FunctionWorker | None:
        """Rank the open scans, or the scans in the chosen folder, by the model's uncertainty."""
        if self.source.value == FOLDER:
            folder = Path(self.folder.value)
            if not folder.is_dir():
                show_info("Choose a folder of scans (NIfTI files or DICOM series) to rank.")
                return None
            sources: list[Any] = [folder]
            layers: list[Layer] = []
        else:
            layers = [layer for layer in self._viewer.layers if _is_scan(layer)]
            if not layers:
                show_info("Open some scans to rank them, or rank the scans in a folder.")
                return None
            try:
                sources = [scan_volume(layer) for layer in layers]
            except ScanClassifierError as error:
                notify_error(error, "Ranking")
                return None
        self._cancel = threading.Event()
        model = self.model.line_edit.value.strip()
        job = partial(
            _rank,
            sources,
            self._bundles.get(model) or model,
            measure=self.measure.value,
            passes=self.passes.value,
            progress=self._relay.report,
            cancel=self._cancel,
        )
        on_ranked = partial(self._show_ranking, model, layers)
        return self._start(
            job, on_ranked, "Ranking", "Ranking scans by uncertainty", cancellable=True
        )

    def cancel(self) -> None:
        """Ask the running ranking to stop at its next scan."""
        self._cancel.set()
        self.cancel_button.enabled = False

    def _show_ranking(self, model: str, layers: list[Layer], outcome: _RankOutcome) -> None:
        bundle, ranking, skipped = outcome
        self._bundles[model] = bundle
        self._ranking = [(r, layers[r.item] if layers else None) for r in ranking]
        self.ranking.clear()
        for index, (ranked, layer) in enumerate(self._ranking):
            name = layer.name if layer is not None else ranked.name
            item = QListWidgetItem(_ranked_text(ranked, name))
            item.setData(DATA_ROLE, index)
            self.ranking.addItem(item)
        self.class_label.reset_choices()
        if skipped:
            show_warning(f"Left out of the ranking: {'; '.join(skipped)}")

    def show_ranked(self, index: int) -> FunctionWorker | None:
        """Select the ranked scan's layer, opening it from disk when it is not open."""
        ranked, layer = self._ranking[index]
        if layer is not None and layer in self._viewer.layers:
            self._viewer.layers.selection.active = layer
            return None
        if ranked.path is None:
            show_info(f"'{ranked.name}' has been closed since it was ranked.")
            return None
        on_loaded = partial(self._on_ranked_loaded, index)
        return self._start(partial(load_ranked, ranked), on_loaded, "Opening", "Opening the scan")

    def _on_ranked_loaded(self, index: int, volume: Volume) -> None:
        ranked, _ = self._ranking[index]
        layer = self._add_scan(volume, f"#{ranked.rank} {volume.display_name()}")  # no file name
        self._ranking[index] = (ranked, layer)
        self._viewer.layers.selection.active = layer

    # ------------------------------------------------------------------------------ running

    def _start(
        self,
        job: Callable[[], Any],
        on_result: Callable[[Any], None],
        name: str,
        status: str,
        *,
        cancellable: bool = False,
    ) -> FunctionWorker | None:
        """Run ``job`` in a worker thread (one at a time) with a progress bar; only a ranking
        can be cancelled (saving and opening are short, and atomic)."""
        if self.worker is not None:
            show_info("Wait for the current job to finish.")
            return None
        worker = run_in_thread(job)
        worker.returned.connect(on_result)
        worker.errored.connect(lambda error: notify_error(error, name))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._set_running(True, status)
        self.cancel_button.enabled = cancellable
        worker.start()
        return worker

    def _set_running(self, running: bool, status: str = "") -> None:
        for button in (self.save_button, self.rank_button):
            button.enabled = not running
        self.cancel_button.enabled = False
        if running:
            self._progress = progress(total=0, desc=status)
        elif self._progress is not None:
            self._progress.close()
            self._progress = None

    def _on_progress(self, report: tuple[int, int, str]) -> None:
        done, total, message = report
        bar = self._progress  # updating the bar may let the worker's end run (and close it)
        if bar is not None:
            bar.total = total
            bar.set_description(message)
            bar.update(done - bar.n)

    def _on_finished(self) -> None:
        self.worker = None
        self._set_running(False)


_RankOutcome = tuple[Bundle, list[Ranked], list[str]]


def _rank(sources: list[Any], model: Bundle | str, **options: Any) -> _RankOutcome:
    """In the worker: load the model unless loaded before, and rank; the skips come back too."""
    bundle = model if isinstance(model, Bundle) else resolve_bundle(model or None)
    skipped: list[str] = []
    ranking = rank_by_uncertainty(sources, bundle, on_skip=skipped.append, **options)
    return bundle, ranking, skipped


def _load_case(library: CaseLibrary, case_id: str) -> tuple[CaseRecord, Volume, np.ndarray | None]:
    return (library.get(case_id), *library.load(case_id))


def case_prediction(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a case keeps of the classification stored on a scan layer (None if unclassified)."""
    if not result:
        return None
    kept = {key: result[key] for key in PREDICTION_KEYS if key in result}
    uncertainty = result.get("uncertainty") or {}
    kept["uncertainty"] = {key: uncertainty[key] for key in UNCERTAINTY_KEYS if key in uncertainty}
    return kept


def _is_scan(layer: Layer | None) -> bool:
    return isinstance(layer, Image) and not is_result_layer(layer)


def _case_text(record: CaseRecord) -> str:
    """A case in the list: label, modality, grid, date, mask; never anything from the patient."""
    shape = "x".join(str(n) for n in record.shape)
    mask = " · mask" if record.has_mask else ""
    return f"{record.label} · {record.modality} {shape} · {record.created[:10]}{mask}"


def _ranked_text(ranked: Ranked, name: str) -> str:
    return (
        f"{ranked.rank}. {name} · {ranked.score:.3f} · "
        f"{ranked.predicted_class} {ranked.probabilities[ranked.predicted_class]:.2f}"
    )


def _section(title: str, widgets: list[Any]) -> Container:
    section = Container(widgets=[Label(value=f"<b>{title}</b>"), *widgets])
    section.margins = (0, 4, 0, 4)
    return section


def _row(*buttons: PushButton) -> Container:
    row = Container(widgets=list(buttons), layout="horizontal", labels=False)
    row.margins = (0, 0, 0, 0)
    return row


def _list_widget(tooltip: str) -> QListWidget:
    widget = QListWidget()
    widget.setToolTip(tooltip)
    widget.setFixedHeight(LIST_HEIGHT)
    return widget
