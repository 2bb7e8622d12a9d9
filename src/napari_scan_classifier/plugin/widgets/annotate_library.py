"""The Annotate dock's case library: cases per class and a list of cases; clicking one opens it
(scan and mask). The selected case can be relabelled or deleted to the library's trash, from
where it can be restored; the library can be exported to a zip and cases imported from one."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, LineEdit, PushButton
from napari.layers import Layer
from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import QFileDialog, QListWidgetItem, QSizePolicy, QWidget
from superqt.utils import FunctionWorker

from napari_scan_classifier.cases import (
    CaseLibrary,
    CaseRecord,
    ImportResult,
    clean_label,
    default_root,
)
from napari_scan_classifier.datasets import n_cases
from napari_scan_classifier.errors import CaseLibraryError, ScanClassifierError
from napari_scan_classifier.plugin.layers import (
    find_result_layer,
    mask_to_layer_data,
    put_result_layer,
    volume_to_layer_data,
)
from napari_scan_classifier.plugin.widgets.annotate_layout import (
    CASE_KEY,
    DATA_ROLE,
    MASK_KIND,
    list_widget,
    row_of,
    section_of,
)
from napari_scan_classifier.plugin.widgets.plots import notify_error
from napari_scan_classifier.volume import Volume

if TYPE_CHECKING:
    import napari

ZIP_FILTER = "Zip archives (*.zip)"


class CaseLibrarySection:
    """The case library part of the Annotate dock: a mixin of its widget, whose viewer, label
    fields and job runner it uses."""

    _viewer: napari.viewer.Viewer
    native: QWidget
    class_label: ComboBox
    new_label: LineEdit
    _start: Callable[..., FunctionWorker | None]
    chosen_label: Callable[[], str]

    def _library_section(self) -> Container:
        self.library = FileEdit(label="Library", mode="d", value=default_root())
        self.counts = Label(value="")
        self.counts.native.setWordWrap(True)
        self.counts.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.cases = list_widget(
            "Click a case to open its scan and mask, or to relabel or delete it"
        )
        section = section_of("Case library", [self.library, self.counts])
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
            row_of(self.relabel_button, self.delete_button),
            row_of(Label(value="Trash"), self.trash, self.restore_button),
            row_of(self.export_button, self.import_button),
        ]
        actions = Container(widgets=rows, labels=False)
        actions.margins = (0, 0, 0, 0)
        return actions

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


def _load_case(library: CaseLibrary, case_id: str) -> tuple[CaseRecord, Volume, np.ndarray | None]:
    return (library.get(case_id), *library.load(case_id))


def _case_layer_name(record: CaseRecord) -> str:
    return f"case {record.case_id[:8]} · {record.label}"


def _case_text(record: CaseRecord) -> str:
    """A case in the list: label, modality, grid, date, mask; never anything from the patient."""
    shape = "x".join(str(n) for n in record.shape)
    mask = " · mask" if record.has_mask else ""
    return f"{record.label} · {record.modality} {shape} · {record.created[:10]}{mask}"
