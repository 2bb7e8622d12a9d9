"""The Annotate dock's "most informative first" section:
:func:`~napari_scan_classifier.active_learning.rank_by_uncertainty` on the open scans or a
folder, in a worker thread; clicking an entry selects or opens that scan."""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, Container, FileEdit, PushButton, SpinBox
from napari.layers import Layer
from napari.utils.notifications import show_info, show_warning
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QListWidgetItem
from superqt.utils import FunctionWorker

from napari_scan_classifier.active_learning import (
    DEFAULT_PASSES,
    MEASURE_TITLES,
    MEASURES,
    Ranked,
    load_ranked,
    rank_by_uncertainty,
)
from napari_scan_classifier.errors import ScanClassifierError
from napari_scan_classifier.models import Bundle
from napari_scan_classifier.plugin.layers import scan_volume
from napari_scan_classifier.plugin.widgets.annotate_layout import (
    DATA_ROLE,
    is_scan,
    list_widget,
    row_of,
    section_of,
)
from napari_scan_classifier.plugin.widgets.classify import BUNDLE_FILTER
from napari_scan_classifier.plugin.widgets.plots import Relay, notify_error
from napari_scan_classifier.results import resolve_bundle
from napari_scan_classifier.volume import Volume

if TYPE_CHECKING:
    import napari

OPEN_LAYERS = "layers"
FOLDER = "folder"
OOD_ITEM_COLOR = "#8a8f93"


class RankingSection:
    """The ranking part of the Annotate dock: a mixin of its widget, whose viewer, label field,
    job runner and scan opener it uses."""

    _viewer: napari.viewer.Viewer
    class_label: ComboBox
    _bundles: dict[str, Bundle]
    _ranking: list[tuple[Ranked, Layer | None]]
    _cancel: threading.Event
    _relay: Relay
    _start: Callable[..., FunctionWorker | None]
    _add_scan: Callable[[Volume, str], Layer]

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
        self.ranking = list_widget("Most uncertain first: click to select or open the scan")
        widgets = [
            self.source,
            self.folder,
            self.model,
            self.measure,
            self.passes,
            row_of(self.rank_button, self.cancel_button),
        ]
        section = section_of("Most informative first", widgets)
        section.native.layout().addWidget(self.ranking)
        return section

    def _on_source_changed(self, source: str) -> None:
        self.folder.visible = source == FOLDER

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
            layers = [layer for layer in self._viewer.layers if is_scan(layer)]
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


_RankOutcome = tuple[Bundle, list[Ranked], list[str]]


def _rank(sources: list[Any], model: Bundle | str, **options: Any) -> _RankOutcome:
    """In the worker: load the model unless loaded before, and rank; the skips come back too."""
    bundle = model if isinstance(model, Bundle) else resolve_bundle(model or None)
    skipped: list[str] = []
    ranking = rank_by_uncertainty(sources, bundle, on_skip=skipped.append, **options)
    return bundle, ranking, skipped


def _ranked_text(ranked: Ranked, name: str) -> str:
    """``"1. name · entropy 0.302 · predicted lesion (p = 0.61)"``: every number named."""
    measure = ranked.measure.replace("_", " ")
    text = (
        f"{ranked.rank}. {name} · {measure} {ranked.score:.3f} · predicted "
        f"{ranked.predicted_class} (p = {ranked.probabilities[ranked.predicted_class]:.2f})"
    )
    return text if ranked.in_distribution else f"{text} · out of distribution"
