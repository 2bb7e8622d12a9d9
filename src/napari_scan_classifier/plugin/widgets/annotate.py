"""The "Annotate" dock widget: label the scan on screen, paint its lesion, keep it in the case
library, and find the scans most worth labelling next.

Three parts, each thin over the core:

- **Annotate**: a class label (the model's and the library's classes, or a new one), an optional
  lesion mask painted in a labels layer on the scan layer's grid (mapped back to the scan as
  acquired by plugin/layers.py), and *Save case*, which adds the scan with the last
  classification stored on its layer to :class:`~napari_scan_classifier.cases.CaseLibrary`.
- **Case library**: cases per class and a list of cases; clicking one opens it (scan and mask).
  The selected case can be relabelled or deleted to the library's trash, from where it can be
  restored; the library can be exported to a zip and cases imported from one.
- **Most informative first**: :func:`~napari_scan_classifier.active_learning.rank_by_uncertainty`
  on the open scans or a folder; clicking an entry selects or opens that scan.

Disk and model work runs in worker threads; what the user can fix (no label, a mask on another
grid, a read-only or full library, a duplicate) is checked before anything is written and shown
as one line in napari's notifications. The library itself writes atomically.

A painted lesion mask is autosaved as a draft in the library a moment after the last stroke, so a
crash of the viewer before *Save case* loses little; adding a mask to the same scan later brings
the draft back, and saving the case removes it.
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
from magicgui.widgets.bases import Widget
from napari.layers import Image, Labels, Layer
from napari.utils import progress
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QFileDialog, QListWidget, QListWidgetItem, QSizePolicy, QWidget
from superqt.utils import FunctionWorker

from napari_scan_classifier.active_learning import (
    DEFAULT_PASSES,
    MEASURE_TITLES,
    MEASURES,
    Ranked,
    load_ranked,
    rank_by_uncertainty,
)
from napari_scan_classifier.cases import (
    CaseLibrary,
    CaseRecord,
    ImportResult,
    clean_label,
    default_root,
    scan_key,
)
from napari_scan_classifier.datasets import n_cases
from napari_scan_classifier.errors import CaseLibraryError, ScanClassifierError
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
from napari_scan_classifier.plugin.layout import scroll_when_docked
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
OOD_ITEM_COLOR = "#8a8f93"
DATA_ROLE = Qt.ItemDataRole.UserRole  # where a list item keeps its case id or ranking index
# What a case keeps of a classification: enough to compare label and model later, compact.
PREDICTION_KEYS = ("model", "predicted_class", "probabilities")
UNCERTAINTY_KEYS = ("std", "predictive_entropy", "mutual_information", "method", "passes")
DRAFT_DELAY_MS = 2000  # autosave a mask this long after the last stroke, so painting stays fluent
ZIP_FILTER = "Zip archives (*.zip)"


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
        self.drafts = MaskDrafts(viewer, lambda: Path(self.library.value))
        library = self._library_section()  # first: the label choices read the library
        self.extend([self._annotate_section(), library, self._ranking_section()])
        self.native.layout().addStretch(1)  # keep the rows together at the top
        self._connect()
        self._follow_active()
        self.show_library()
        scroll_when_docked(self)

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
        self.cases = _list_widget(
            "Click a case to open its scan and mask, or to relabel or delete it"
        )
        section = _section("Case library", [self.library, self.counts])
        section.native.layout().addWidget(self.cases)
        section.native.layout().addWidget(self._library_actions().native)
        return section

    def _library_actions(self) -> Container:
        """Buttons under the case list: relabel, delete, restore from trash, export, import."""
        self.relabel_button = PushButton(text="Relabel selected")
        self.relabel_button.tooltip = "Give the case selected in the list the label chosen above"
        self.delete_button = PushButton(text="Delete selected")
        self.delete_button.tooltip = (
            "Move the selected case to the trash, from where it can be restored"
        )
        self.trash = ComboBox(choices=self._trash_choices, nullable=True)
        self.trash.tooltip = "Deleted cases (the trash): choose one to restore"
        self.restore_button = PushButton(text="Restore")
        self.export_button = PushButton(text="Export zip…")
        self.export_button.tooltip = "Write every case of the library to a zip file to share"
        self.import_button = PushButton(text="Import zip…")
        self.import_button.tooltip = "Add the cases of an exported zip (duplicates are skipped)"
        rows = [
            _row(self.relabel_button, self.delete_button),
            _row(Label(value="Trash"), self.trash, self.restore_button),
            _row(self.export_button, self.import_button),
        ]
        actions = Container(widgets=rows, labels=False)
        actions.margins = (0, 0, 0, 0)
        return actions

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
        self.relabel_button.changed.connect(self.relabel_case)
        self.delete_button.changed.connect(self.delete_case)
        self.restore_button.changed.connect(self.restore_case)
        self.export_button.changed.connect(self._ask_export)
        self.import_button.changed.connect(self._ask_import)
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

    def _trash_choices(self, _: Any = None) -> list[tuple[str, str]]:
        """The deleted cases of the chosen library, most recently made first."""
        root = Path(self.library.value)
        if not root.is_dir():
            return []
        try:
            trash = CaseLibrary(root).list_trash()
        except ScanClassifierError:
            return []
        return [(_case_text(record), record.case_id) for record in reversed(trash)]

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
        created = mask is None
        if created:
            try:
                data = empty_mask_layer_data(layer, f"{layer.name} · lesion mask")
            except ScanClassifierError as error:
                notify_error(error, "Adding a mask")
                return None
            mask = put_result_layer(self._viewer.layers, layer, MASK_KIND, data)
        self.drafts.watch(layer, mask, restore=created)
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
        """Cases per class, the list of cases and the trash of the chosen library folder."""
        self.cases.clear()
        self.trash.reset_choices()
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
        self.counts.value = f"{n_cases(len(records))}: {listing}" if records else "No cases yet."
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

    def selected_case(self) -> str | None:
        """The id of the case selected in the list, if any."""
        item = self.cases.currentItem()
        return None if item is None else item.data(DATA_ROLE)

    def relabel_case(self) -> FunctionWorker | None:
        """Give the case selected in the list the label chosen above (or the new class typed)."""
        case_id = self.selected_case()
        if case_id is None:
            show_info("Click a case in the library list to relabel it.")
            return None
        try:
            label = clean_label(self.chosen_label())
        except ScanClassifierError as error:
            notify_error(error, "Relabelling the case")
            return None
        job = partial(CaseLibrary.relabel, case_id=case_id, label=label)
        return self._on_library(job, self._on_relabelled, "Relabelling the case", "Relabelling")

    def _on_relabelled(self, record: CaseRecord) -> None:
        self.new_label.value = ""
        self.show_library()
        self._select_case(record.case_id)
        self._rename_open_case(record)
        show_info(f"Case {record.case_id[:8]} is now labelled '{record.label}'.")

    def delete_case(self) -> FunctionWorker | None:
        """Move the case selected in the list to the library's trash (Restore brings it back)."""
        case_id = self.selected_case()
        if case_id is None:
            show_info("Click a case in the library list to delete it.")
            return None
        job = partial(_delete, case_id=case_id)
        return self._on_library(job, self._on_deleted, "Deleting the case", "Deleting")

    def _on_deleted(self, record: CaseRecord) -> None:
        self.show_library()
        self.trash.value = record.case_id
        show_info(
            f"Case {record.case_id[:8]} '{record.label}' was moved to the trash; "
            "Restore brings it back."
        )

    def restore_case(self) -> FunctionWorker | None:
        """Bring the case chosen in the trash back into the library."""
        case_id = self.trash.value
        if case_id is None:
            show_info("The trash is empty: there is no deleted case to restore.")
            return None
        job = partial(CaseLibrary.restore, case_id=case_id)
        return self._on_library(job, self._on_restored, "Restoring the case", "Restoring")

    def _on_restored(self, record: CaseRecord) -> None:
        self.show_library()
        self._select_case(record.case_id)
        show_info(f"Case {record.case_id[:8]} '{record.label}' is back in the library.")

    def export_library(self, path: Path | str) -> FunctionWorker | None:
        """Write every case of the library to the zip file ``path`` (Import reads it back)."""
        job = partial(_export, path=Path(path))
        return self._on_library(job, self._on_exported, "Exporting the library", "Exporting")

    def _on_exported(self, exported: tuple[Path, int]) -> None:
        path, count = exported
        show_info(f"Exported {count} cases to {path.name}.")

    def import_library(self, path: Path | str) -> FunctionWorker | None:
        """Add the cases of an exported zip file to the library (duplicates are skipped)."""
        job = partial(CaseLibrary.import_zip, path=Path(path))
        return self._on_library(job, self._on_imported, "Importing cases", "Importing cases")

    def _on_imported(self, result: ImportResult) -> None:
        self.show_library()
        message = f"Imported {len(result.imported)} cases."
        if result.skipped:
            show_warning(f"{message} Left out: {'; '.join(result.skipped)}")
        else:
            show_info(message)

    def _ask_export(self) -> None:
        path = _ask_zip(self.native, save=True)
        if path is not None:
            self.export_library(path)

    def _ask_import(self) -> None:
        path = _ask_zip(self.native, save=False)
        if path is not None:
            self.import_library(path)

    def _on_library(
        self,
        call: Callable[[CaseLibrary], Any],
        on_result: Callable[[Any], None],
        name: str,
        status: str,
    ) -> FunctionWorker | None:
        """Open the chosen library and run ``call`` on it, both in a worker thread."""
        return self._start(
            partial(_with_library, Path(self.library.value), call), on_result, name, status
        )

    def _select_case(self, case_id: str) -> None:
        for row in range(self.cases.count()):
            if self.cases.item(row).data(DATA_ROLE) == case_id:
                self.cases.setCurrentRow(row)

    def _rename_open_case(self, record: CaseRecord) -> None:
        """Open layers of a relabelled case take its new label."""
        for layer in list(self._viewer.layers):
            if layer.metadata.get(CASE_KEY) == record.case_id:
                layer.name = _case_layer_name(record)
                mask = find_result_layer(self._viewer.layers, layer, MASK_KIND)
                if mask is not None:
                    mask.name = f"{layer.name} · lesion mask"

    def _on_case_loaded(self, loaded: tuple[CaseRecord, Volume, np.ndarray | None]) -> None:
        record, volume, mask = loaded
        scan = self._add_scan(volume, _case_layer_name(record))
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
            if not ranked.in_distribution:  # set apart: greyed, the reasons on hover
                item.setForeground(QColor(OOD_ITEM_COLOR))
                item.setToolTip("\n".join(ranked.ood_reasons))
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
        buttons = (
            self.save_button,
            self.rank_button,
            self.relabel_button,
            self.delete_button,
            self.restore_button,
            self.export_button,
            self.import_button,
        )
        for button in buttons:
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


class MaskDrafts:
    """Autosaves painted lesion masks as drafts in the case library, and restores them.

    A stroke (re)starts a timer; when it fires, the masks painted since their last draft are
    copied and written in a worker, one write at a time, so painting stays fluent and a crash
    loses at most the last moments. Drafts are keyed by the scan's content: the same scan
    reopened later finds its draft, whatever its layer is called or where it came from.
    """

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        library: Callable[[], Path],
        delay_ms: int = DRAFT_DELAY_MS,
    ) -> None:
        self._viewer = viewer
        self._library = library
        self._scans: dict[str, Layer] = {}  # by watched mask's unique_id: the scan it is for
        self._keys: dict[str, str] = {}  # by scan's unique_id: its scan key, hashed once
        self._pending: dict[str, Labels] = {}  # masks painted since their last draft
        self._writer: FunctionWorker | None = None
        self._workers: set[FunctionWorker] = set()
        self.timer = QTimer()
        self.timer.setSingleShot(True)
        self.timer.setInterval(delay_ms)
        self.timer.timeout.connect(self.flush)

    @property
    def busy(self) -> bool:
        """Whether a draft is being looked up or written."""
        return bool(self._workers)

    def watch(self, scan: Layer, mask: Labels, *, restore: bool) -> None:
        """Autosave what is painted in ``mask``; with ``restore``, first bring back its draft."""
        if mask.unique_id not in self._scans:
            mask.events.paint.connect(self._painted)
        self._scans[mask.unique_id] = scan
        if restore:
            self._restore(scan, mask)

    def flush(self) -> None:
        """Write drafts of the masks painted since their last one (the timer calls this)."""
        if self._writer is not None:
            return  # one write at a time: the pending masks follow when it ends
        masks = [mask for mask in self._pending.values() if mask in self._viewer.layers]
        self._pending.clear()
        jobs = [job for job in map(self._draft_job, masks) if job is not None]
        if jobs:
            job = partial(_keep_drafts, self._library(), jobs)
            self._writer = self._run(job, self._keys.update, "Autosaving the lesion mask")

    def _painted(self, event: Any) -> None:
        mask = event.source
        self._pending[mask.unique_id] = mask
        self.timer.start()  # restarts: the draft follows the last stroke

    def _draft_job(self, mask: Labels) -> _DraftJob | None:
        """What the worker needs to write ``mask``'s draft, with the mask copied (painting goes
        on while it writes)."""
        scan = self._scans[mask.unique_id]
        try:
            volume = scan_volume(scan)
            painted = np.array(mask_on_acquired_grid(mask, volume))
        except ScanClassifierError as error:
            notify_error(error, "Autosaving the lesion mask")
            return None
        return scan.unique_id, self._keys.get(scan.unique_id), volume, painted

    def _restore(self, scan: Layer, mask: Labels) -> None:
        try:
            volume = scan_volume(scan)
        except ScanClassifierError as error:
            notify_error(error, "Looking for a draft of the mask")
            return
        job = partial(_find_draft, self._library(), volume)
        on_found = partial(self._found, scan, mask, volume)
        self._run(job, on_found, "Restoring the draft of the lesion mask")

    def _found(
        self, scan: Layer, mask: Labels, volume: Volume, found: tuple[str, np.ndarray | None]
    ) -> None:
        """Paint the draft into the new mask, unless the user has begun painting it."""
        key, draft = found
        self._keys[scan.unique_id] = key
        if draft is None or mask not in self._viewer.layers:
            return
        if np.any(mask.data):
            show_warning(
                "This scan has an autosaved draft of its lesion mask, but painting has begun: "
                "the new painting is kept and replaces the draft."
            )
            return
        put_result_layer(
            self._viewer.layers, scan, MASK_KIND, mask_to_layer_data(volume, draft, mask.name)
        )
        show_info(
            "Restored the lesion mask painted on this scan before (an autosaved draft); "
            "Save case keeps it."
        )

    def _run(
        self, job: Callable[[], Any], on_result: Callable[[Any], None], name: str
    ) -> FunctionWorker:
        worker = run_in_thread(job)
        worker.returned.connect(on_result)
        worker.errored.connect(lambda error: notify_error(error, name))
        worker.finished.connect(partial(self._finished, worker))
        self._workers.add(worker)
        worker.start()
        return worker

    def _finished(self, worker: FunctionWorker) -> None:
        self._workers.discard(worker)
        if worker is self._writer:
            self._writer = None
            if self._pending:
                self.timer.start()


# (scan layer id, its scan key if known, the scan, the mask on the scan's acquired grid)
_DraftJob = tuple[str, str | None, Volume, np.ndarray]
_RankOutcome = tuple[Bundle, list[Ranked], list[str]]


def _keep_drafts(root: Path, jobs: list[_DraftJob]) -> dict[str, str]:
    """In the worker: write each mask's draft; returns the scan keys, hashed once per scan."""
    library = CaseLibrary(root)
    keys: dict[str, str] = {}
    for scan_id, key, volume, mask in jobs:
        keys[scan_id] = key or scan_key(volume)
        library.save_draft(keys[scan_id], mask)
    return keys


def _find_draft(root: Path, volume: Volume) -> tuple[str, np.ndarray | None]:
    """In the worker: the scan's key and its draft mask, if the library keeps one."""
    key = scan_key(volume)
    if not root.is_dir():  # no library yet, so no draft either
        return key, None
    return key, CaseLibrary(root).load_draft(key, volume.shape)


def _with_library(root: Path, call: Callable[[CaseLibrary], Any]) -> Any:
    return call(CaseLibrary(root))


def _delete(library: CaseLibrary, case_id: str) -> CaseRecord:
    """Move the case to the trash; returns its record, to name it in the message."""
    record = library.get(case_id)
    library.delete(case_id)
    return record


def _export(library: CaseLibrary, path: Path) -> tuple[Path, int]:
    """Write every case to ``path``; returns the path and how many cases it holds."""
    records = library.list()
    if not records:
        raise CaseLibraryError("The library has no cases to export yet.")
    return library.export_zip(path, [record.case_id for record in records]), len(records)


def _ask_zip(parent: QWidget, *, save: bool) -> Path | None:
    """Ask for a zip file to write (``save``) or to read; None when the user cancels."""
    if save:
        name, _ = QFileDialog.getSaveFileName(
            parent, "Export the case library", "cases.zip", ZIP_FILTER
        )
    else:
        name, _ = QFileDialog.getOpenFileName(parent, "Import cases", "", ZIP_FILTER)
    if not name:
        return None
    path = Path(name)
    return path if not save or path.suffix.lower() == ".zip" else path.with_name(f"{path.name}.zip")


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


def _case_layer_name(record: CaseRecord) -> str:
    return f"case {record.case_id[:8]} · {record.label}"


def _is_scan(layer: Layer | None) -> bool:
    return isinstance(layer, Image) and not is_result_layer(layer)


def _case_text(record: CaseRecord) -> str:
    """A case in the list: label, modality, grid, date, mask; never anything from the patient."""
    shape = "x".join(str(n) for n in record.shape)
    mask = " · mask" if record.has_mask else ""
    return f"{record.label} · {record.modality} {shape} · {record.created[:10]}{mask}"


def _ranked_text(ranked: Ranked, name: str) -> str:
    """``"1. name · entropy 0.302 · predicted lesion (p = 0.61)"``: every number named."""
    measure = ranked.measure.replace("_", " ")
    text = (
        f"{ranked.rank}. {name} · {measure} {ranked.score:.3f} · predicted "
        f"{ranked.predicted_class} (p = {ranked.probabilities[ranked.predicted_class]:.2f})"
    )
    return text if ranked.in_distribution else f"{text} · out of distribution"


def _section(title: str, widgets: list[Any]) -> Container:
    section = Container(widgets=[Label(value=f"<b>{title}</b>"), *widgets])
    section.margins = (0, 4, 0, 4)
    return section


def _row(*widgets: Widget) -> Container:
    row = Container(widgets=list(widgets), layout="horizontal", labels=False)
    row.margins = (0, 0, 0, 0)
    return row


def _list_widget(tooltip: str) -> QListWidget:
    widget = QListWidget()
    widget.setToolTip(tooltip)
    widget.setFixedHeight(LIST_HEIGHT)
    return widget
