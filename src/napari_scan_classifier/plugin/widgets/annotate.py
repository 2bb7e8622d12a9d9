"""The "Annotate" dock widget: label the scan on screen, paint its lesion, keep it in the case
library, and find the scans most worth labelling next.

Three parts, each thin over the core:

- **Annotate**: a class label (the model's and the library's classes, or a new one), an optional
  lesion mask painted in a labels layer on the scan layer's grid (mapped back to the scan as
  acquired by plugin/layers.py), and *Save case*, which adds the scan with the last
  classification stored on its layer to :class:`~napari_scan_classifier.cases.CaseLibrary`.
- **Case library** (annotate_library.py): cases per class and a list of cases; clicking one
  opens it (scan and mask). The selected case can be relabelled or deleted to the library's
  trash, from where it can be restored; the library can be exported to a zip and cases imported
  from one.
- **Most informative first** (annotate_ranking.py):
  :func:`~napari_scan_classifier.active_learning.rank_by_uncertainty` on the open scans or a
  folder; clicking an entry selects or opens that scan.

Disk and model work runs in worker threads; what the user can fix (no label, a mask on another
grid, a read-only or full library, a duplicate) is checked before anything is written and shown
as one line in napari's notifications. The library itself writes atomically.

A painted lesion mask is autosaved as a draft in the library a moment after the last stroke
(annotate_drafts.py), so a crash of the viewer before *Save case* loses little; adding a mask to
the same scan later brings the draft back, and saving the case removes it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, LineEdit, PushButton
from napari.layers import Labels, Layer
from napari.utils.notifications import show_info
from superqt.utils import FunctionWorker

from napari_scan_classifier.active_learning import Ranked, Unranked
from napari_scan_classifier.cases import CaseLibrary, CaseRecord, clean_label, scan_key
from napari_scan_classifier.errors import CaseLibraryError, ScanClassifierError
from napari_scan_classifier.models import Bundle
from napari_scan_classifier.plugin.layers import (
    empty_mask_layer_data,
    find_result_layer,
    mask_on_acquired_grid,
    put_result_layer,
    scan_volume,
    shown_frame,
)
from napari_scan_classifier.plugin.layout import scroll_when_docked
from napari_scan_classifier.plugin.widgets.annotate_drafts import DRAFT_DELAY_MS, MaskDrafts
from napari_scan_classifier.plugin.widgets.annotate_layout import (
    CASE_KEY,
    DATA_ROLE,
    MASK_KIND,
    is_scan,
    row_of,
    section_of,
)
from napari_scan_classifier.plugin.widgets.annotate_library import CaseLibrarySection
from napari_scan_classifier.plugin.widgets.annotate_ranking import RankingSection
from napari_scan_classifier.plugin.widgets.classify import CLASSIFICATION_KEY
from napari_scan_classifier.plugin.widgets.plots import Relay, notify_error, run_in_thread
from napari_scan_classifier.plugin.widgets.progress_bar import DockProgress
from napari_scan_classifier.volume import Volume

if TYPE_CHECKING:
    import napari

__all__ = [
    "CASE_KEY",
    "DATA_ROLE",
    "DRAFT_DELAY_MS",
    "MASK_KIND",
    "AnnotateWidget",
    "MaskDrafts",
    "case_prediction",
]

# What a case keeps of a classification: enough to compare label and model later, compact.
PREDICTION_KEYS = ("model", "predicted_class", "probabilities")
UNCERTAINTY_KEYS = ("std", "predictive_entropy", "mutual_information", "method", "passes")


class AnnotateWidget(CaseLibrarySection, RankingSection, Container):
    """Label, mask and save the chosen scan; browse the case library; rank scans to label."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)
        self._viewer = viewer
        self._bundles: dict[str, Bundle] = {}  # ranking models by path, loaded once
        self._ranking: list[tuple[Ranked | Unranked, Layer | None]] = []
        self._cancel = threading.Event()
        self.progress_bar = DockProgress()
        self._relay = Relay()
        self._relay.received.connect(self._on_progress)
        self.worker: FunctionWorker | None = None
        self.drafts = MaskDrafts(viewer, lambda: Path(self.library.value))
        library = self._library_section()  # first: the label choices read the library
        self.extend([self.progress_bar, self._annotate_section(), library, self._ranking_section()])
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
        buttons = row_of(self.add_mask_button, self.save_button)
        widgets = [self.scan, self.class_label, self.new_label, self.mask, buttons]
        return section_of("Annotate", widgets)

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

    # ------------------------------------------------------------------------------ choices

    def _scan_choices(self, _: Any = None) -> list[tuple[str, Layer]]:
        return [(layer.name, layer) for layer in self._viewer.layers if is_scan(layer)]

    def _mask_choices(self, _: Any = None) -> list[tuple[str, Layer]]:
        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Labels)]

    def _label_choices(self, _: Any = None) -> list[str]:
        """The chosen scan's model classes, the library's classes and those of the model that
        ranked the scan (with several models, only its own: a CT scan is not offered an MR
        model's classes)."""
        names: list[str] = []
        result = self._classification()
        if result:
            names += list(result.get("probabilities", {}))
        names += list(self._library_counts())
        names += self.ranked_classes(self.scan.value)
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
        if is_scan(active):
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
            scan = scan_volume(layer)
            volume = shown_frame(scan, layer, self._viewer.dims.point)
            mask = self._mask_for(volume)
            library = CaseLibrary(self.library.value)
        except ScanClassifierError as error:
            notify_error(error, "Saving the case")
            return None
        prediction = case_prediction(self._classification())
        job = partial(_add_case, library, scan, volume, label, mask, prediction)
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
            self.progress_bar.start(status)
        else:
            self.progress_bar.stop()

    def _on_progress(self, report: tuple[int, int, str]) -> None:
        if self.progress_bar.running:  # not a report that arrived after the end
            self.progress_bar.update_to(*report)

    def _on_finished(self) -> None:
        self.worker = None
        self._set_running(False)


def case_prediction(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a case keeps of the classification stored on a scan layer (None if unclassified)."""
    if not result:
        return None
    kept = {key: result[key] for key in PREDICTION_KEYS if key in result}
    uncertainty = result.get("uncertainty") or {}
    kept["uncertainty"] = {key: uncertainty[key] for key in UNCERTAINTY_KEYS if key in uncertainty}
    return kept


def _add_case(
    library: CaseLibrary,
    scan: Volume,
    volume: Volume,
    label: str,
    mask: np.ndarray | None,
    prediction: dict[str, Any] | None,
) -> CaseRecord:
    """In the worker: save the case; for a frame of a 4D scan, also drop the mask's draft,
    which is keyed by the whole scan (the library drops the draft of what it saved)."""
    record = library.add(volume, label, mask=mask, prediction=prediction)
    if volume is not scan:
        with contextlib.suppress(CaseLibraryError):  # saved; a leftover draft is only restored
            library.discard_draft(scan_key(scan))
    return record
