"""The Annotate dock's "most informative first" section: the open scans or a folder's ranked by
uncertainty in a worker thread; clicking an entry selects or opens that scan.

With the Model field empty each scan is ranked by the model its modality and body region choose
(:func:`~napari_scan_classifier.active_learning.rank_by_chosen_model`, as the Classify dock and
``--model auto`` choose); each entry names its model, and scans no installed model covers are
listed last with the reason. A model given in the field ranks every scan
(:func:`~napari_scan_classifier.active_learning.rank_by_uncertainty`)."""

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
    Ranking,
    Unranked,
    load_ranked,
    rank_by_chosen_model,
    rank_by_uncertainty,
)
from napari_scan_classifier.choice import is_auto
from napari_scan_classifier.errors import ScanClassifierError
from napari_scan_classifier.models import Bundle
from napari_scan_classifier.plugin.layers import scan_volume, shown_frame
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
    _ranking: list[tuple[Ranked | Unranked, Layer | None]]
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
        self.model.line_edit.native.setPlaceholderText("chosen by each scan")
        self.model.tooltip = (
            "A bundle folder (pick its bundle.json), a .zip or a shipped model's name; empty: "
            "each scan is ranked by the shipped or installed model made for its modality and "
            "body region"
        )
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
                point = self._viewer.dims.point
                sources = [shown_frame(scan_volume(layer), layer, point) for layer in layers]
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
        if bundle is not None:
            self._bundles[model] = bundle
        entries = [*ranking.ranked, *ranking.uncovered]
        self._ranking = [(e, layers[e.item] if layers else None) for e in entries]
        self.ranking.clear()
        for index, (entry, layer) in enumerate(self._ranking):
            item = _list_item(entry, layer.name if layer is not None else entry.name)
            item.setData(DATA_ROLE, index)
            self.ranking.addItem(item)
        self.class_label.reset_choices()
        if ranking.uncovered:
            show_info(
                f"Not ranked: {len(ranking.uncovered)} of the scans, which no installed model "
                "covers (listed last, with the reason)."
            )
        if skipped:
            show_warning(f"Left out of the ranking: {'; '.join(skipped)}")

    def ranked_classes(self, layer: Layer | None) -> list[str]:
        """The classes of the model that ranked ``layer``'s scan (none when it was not)."""
        for entry, ranked_layer in self._ranking:
            if layer is not None and ranked_layer is layer and isinstance(entry, Ranked):
                return list(entry.probabilities)
        return []

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
        entry, _ = self._ranking[index]
        name = volume.display_name()  # never the file name
        layer = self._add_scan(
            volume, f"#{entry.rank} {name}" if isinstance(entry, Ranked) else name
        )
        self._ranking[index] = (entry, layer)
        self._viewer.layers.selection.active = layer
        self.class_label.reset_choices()  # the ranking model's classes, now the scan is linked


# (the model given, None when each scan chose its own; the ranking; the scans left out)
_RankOutcome = tuple[Bundle | None, Ranking, list[str]]


def _rank(sources: list[Any], model: Bundle | str, **options: Any) -> _RankOutcome:
    """In the worker: with no model given, rank each scan by the model it chooses; else load the
    model unless loaded before, and rank by it. The skips come back too."""
    skipped: list[str] = []
    if isinstance(model, str) and (not model or is_auto(model)):
        return None, rank_by_chosen_model(sources, on_skip=skipped.append, **options), skipped
    bundle = model if isinstance(model, Bundle) else resolve_bundle(model)
    ranked = rank_by_uncertainty(sources, bundle, on_skip=skipped.append, **options)
    return bundle, Ranking(ranked, []), skipped


def _list_item(entry: Ranked | Unranked, name: str) -> QListWidgetItem:
    """A ranked scan, or one no model covers (set apart: greyed, the reason on hover)."""
    if isinstance(entry, Unranked):
        item = QListWidgetItem(f"{name} · not ranked: {entry.reason}")
        item.setForeground(QColor(OOD_ITEM_COLOR))
        item.setToolTip(f"{entry.reason}; {entry.how}")
        return item
    item = QListWidgetItem(_ranked_text(entry, name))
    item.setToolTip("\n".join(filter(None, [entry.choice, *entry.ood_reasons])))
    if not entry.in_distribution:  # set apart: greyed, the reasons on hover
        item.setForeground(QColor(OOD_ITEM_COLOR))
    return item


def _ranked_text(ranked: Ranked, name: str) -> str:
    """``"1. name · entropy 0.302 · predicted lesion (p = 0.61) · by demo_ct_lesion v5"``: every
    number named, and the model (each model's scans are ranked among themselves)."""
    measure = ranked.measure.replace("_", " ")
    text = (
        f"{ranked.rank}. {name} · {measure} {ranked.score:.3f} · predicted "
        f"{ranked.predicted_class} (p = {ranked.probabilities[ranked.predicted_class]:.2f})"
        f" · by {ranked.model}"
    )
    return text if ranked.in_distribution else f"{text} · out of distribution"
