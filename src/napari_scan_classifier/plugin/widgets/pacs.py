"""The "Open from PACS" dock: search a DICOMweb server for studies, list a study's series, and open
one as a layer; the Classify dock sends results back to where a scan came from.

Searches, retrieval and sending run in workers (the window stays live; Cancel stops a retrieval
between instances and adds no layer). Patient fields are shown in the study list, because that is
how the user finds a study, and go nowhere else: layers are named by the loader's safe fields.
Credentials come from the environment or are typed here; they stay in this widget's memory.
"""

from __future__ import annotations

import os
import threading
import weakref
from functools import partial
from typing import TYPE_CHECKING, Any

from magicgui.widgets import CheckBox, ComboBox, Container, Label, LineEdit, PushButton
from napari.layers import Layer
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QAbstractItemView, QLineEdit, QTableWidget, QTableWidgetItem
from superqt.utils import FunctionWorker, GeneratorWorker

from napari_scan_classifier.errors import CancelledError, ScanClassifierError
from napari_scan_classifier.io import LoadResult
from napari_scan_classifier.io.dicomweb import (
    Credentials,
    DicomWebServer,
    DicomWebSource,
    SeriesMatch,
    StudyMatch,
    caching_default,
    load_url,
)
from napari_scan_classifier.plugin.layers import volume_to_layer_data
from napari_scan_classifier.plugin.widgets.progress_bar import DockProgress
from napari_scan_classifier.plugin.widgets.workers import reporting

if TYPE_CHECKING:
    import napari

    from napari_scan_classifier.models import Bundle
    from napari_scan_classifier.results import ScanResult
    from napari_scan_classifier.volume import Volume

ENV_URL = "NSC_DICOMWEB_URL"
STUDY_COLUMNS = ("Patient ID", "Patient name", "Date", "Accession", "Modality", "Description")
SERIES_COLUMNS = ("#", "Modality", "Description", "Images")
MODALITIES = ("", "CT", "MR", "PT", "US", "CR", "DX", "MG", "NM", "XA")

# Where each layer opened here came from (server and series), for "Send to PACS".
PACS_SOURCES: weakref.WeakKeyDictionary[Layer, tuple[DicomWebServer, DicomWebSource]] = (
    weakref.WeakKeyDictionary()
)


def _table(columns: tuple[str, ...]) -> QTableWidget:
    table = QTableWidget(0, len(columns))
    table.setHorizontalHeaderLabels(list(columns))
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.verticalHeader().setVisible(False)
    table.horizontalHeader().setStretchLastSection(True)
    return table


def _fill(table: QTableWidget, rows: list[tuple[Any, ...]]) -> None:
    table.clearSelection()
    table.setRowCount(len(rows))
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            table.setItem(r, c, QTableWidgetItem("" if value is None else str(value)))
    table.resizeColumnsToContents()


class PacsWidget(Container):
    """Server and sign-in, a study search, the series of the chosen study, Open and Cancel."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = viewer
        self._studies: list[StudyMatch] = []
        self._series: list[SeriesMatch] = []
        self._server: DicomWebServer | None = None
        self._cancel_event = threading.Event()
        self.progress_bar = DockProgress()
        self.worker: FunctionWorker | GeneratorWorker | None = None

        self.server = LineEdit(label="Server", value=os.environ.get(ENV_URL, ""))
        self.server.native.setPlaceholderText("http://localhost:8042/dicom-web")
        self.auth = ComboBox(
            label="Sign in",
            choices=[
                ("From the environment", "env"),
                ("User and password", "basic"),
                ("Bearer token", "token"),
            ],
            value="env",
        )
        self.auth.tooltip = "Environment: NSC_DICOMWEB_USER/PASSWORD or NSC_DICOMWEB_TOKEN"
        self.user = LineEdit(label="User")
        self.password = LineEdit(label="Password")
        self.token = LineEdit(label="Token")
        for secret in (self.password, self.token):
            secret.native.setEchoMode(QLineEdit.EchoMode.Password)
        self.patient_id = LineEdit(label="Patient ID")
        self.date_from = LineEdit(label="From date")
        self.date_to = LineEdit(label="To date")
        for date in (self.date_from, self.date_to):
            date.native.setPlaceholderText("YYYYMMDD")
        self.modality = ComboBox(label="Modality", choices=list(MODALITIES), value="")
        self.accession = LineEdit(label="Accession")
        self.search_button = PushButton(text="Search")
        self.cache = CheckBox(text="Keep a local copy of opened series", value=caching_default())
        self.cache.tooltip = "Under your user data folder; opening the series again reads it"
        self.open_button = PushButton(text="Open series", enabled=False)
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self.studies = _table(STUDY_COLUMNS)
        self.series = _table(SERIES_COLUMNS)
        buttons = Container(
            widgets=[self.open_button, self.cancel_button], layout="horizontal", labels=False
        )
        buttons.margins = (0, 0, 0, 0)
        self.extend(
            [
                self.server,
                self.auth,
                self.user,
                self.password,
                self.token,
                self.patient_id,
                self.date_from,
                self.date_to,
                self.modality,
                self.accession,
                self.search_button,
            ]
        )
        layout = self.native.layout()
        layout.addWidget(self.studies)
        layout.addWidget(self.series)
        layout.addWidget(self.cache.native)
        layout.addWidget(buttons.native)
        layout.addWidget(self.progress_bar.native)
        layout.addWidget(self.status.native)
        self.auth.changed.connect(self._show_auth_fields)
        self.search_button.changed.connect(self.search)
        self.open_button.changed.connect(self.open)
        self.cancel_button.changed.connect(self.cancel)
        self.studies.itemSelectionChanged.connect(self._list_series)
        self.series.itemSelectionChanged.connect(self._update_buttons)
        self._show_auth_fields()

    # ---------------------------------------------------------------------------- settings

    def _show_auth_fields(self) -> None:
        mode = self.auth.value
        self.user.visible = self.password.visible = mode == "basic"
        self.token.visible = mode == "token"

    def credentials(self) -> Credentials:
        """What the sign-in fields say (the environment's, unless typed in)."""
        if self.auth.value == "basic":
            return Credentials(user=self.user.value, password=self.password.value)
        if self.auth.value == "token":
            return Credentials(token=self.token.value)
        return Credentials.from_env()

    def connection(self) -> DicomWebServer:
        return DicomWebServer(self.server.value.strip(), self.credentials())

    # ----------------------------------------------------------------------------- running

    def _start(self, worker: FunctionWorker | GeneratorWorker, on_done: Any, what: str) -> None:
        worker.returned.connect(on_done)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.search_button.enabled = self.open_button.enabled = False
        self.status.value = what
        worker.start()

    def search(self) -> FunctionWorker | None:
        """Search for studies matching the filled-in fields, in a worker."""
        if self.worker is not None:
            return None
        try:
            server = self.connection()
        except ScanClassifierError as error:
            show_error(str(error))
            return None
        filters = {
            "patient_id": self.patient_id.value.strip(),
            "date_from": self.date_from.value.strip(),
            "date_to": self.date_to.value.strip(),
            "modality": self.modality.value,
            "accession_number": self.accession.value.strip(),
        }
        search = thread_worker(server.search_studies, start_thread=False, ignore_errors=True)
        worker = search(**filters)
        self._start(worker, partial(self._show_studies, server), "Searching…")
        return worker

    def _show_studies(self, server: DicomWebServer, studies: list[StudyMatch]) -> None:
        self._server = server
        self._studies = studies
        _fill(
            self.studies,
            [
                (
                    s.patient_id,
                    s.patient_name,
                    s.study_date,
                    s.accession_number,
                    s.modalities,
                    s.description,
                )
                for s in studies
            ],
        )
        _fill(self.series, [])
        self._series = []
        self.status.value = f"{len(studies)} {'study' if len(studies) == 1 else 'studies'} found"

    def _list_series(self) -> FunctionWorker | None:
        rows = self.studies.selectionModel().selectedRows()
        if not rows or self.worker is not None or self._server is None:
            return None
        study = self._studies[rows[0].row()]
        worker = thread_worker(self._server.search_series, start_thread=False, ignore_errors=True)(
            study.study_uid
        )
        self._start(worker, self._show_series, "Listing series…")
        return worker

    def _show_series(self, series: list[SeriesMatch]) -> None:
        self._series = series
        _fill(
            self.series,
            [(s.series_number, s.modality, s.description, s.instance_count) for s in series],
        )
        self.status.value = f"{len(series)} series"

    def _chosen_series(self) -> SeriesMatch | None:
        rows = self.series.selectionModel().selectedRows()
        return self._series[rows[0].row()] if rows else None

    def _update_buttons(self) -> None:
        idle = self.worker is None
        self.search_button.enabled = idle
        self.open_button.enabled = idle and self._chosen_series() is not None
        self.cancel_button.enabled = not idle and isinstance(self.worker, GeneratorWorker)

    def open(self) -> GeneratorWorker | None:
        """Retrieve the chosen series and open it as layers, in a worker with progress."""
        series = self._chosen_series()
        if series is None or self.worker is not None or self._server is None:
            return None
        server = self._server
        source = DicomWebSource(server.base_url, series.study_uid, series.series_uid)
        self._cancel_event = threading.Event()
        worker = _retrieval(source, server, self._cancel_event, self.cache.value)
        worker.yielded.connect(self._on_progress)
        worker.aborted.connect(lambda: show_info("Retrieval cancelled."))
        self.progress_bar.start("Retrieving from the PACS")
        self._start(worker, partial(self._add_layers, server, source), "Retrieving…")
        self.cancel_button.enabled = True
        return worker

    def cancel(self) -> None:
        """Stop the retrieval at the next instance; nothing is added."""
        self._cancel_event.set()
        self.cancel_button.enabled = False

    def _on_progress(self, report: tuple[int, int, str]) -> None:
        done, total, message = report
        self.status.value = f"{message}: {done} of {total}"
        if self.progress_bar.running:  # not a report that arrived after the end
            self.progress_bar.update_to(done, total, message)

    def _add_layers(
        self, server: DicomWebServer, source: DicomWebSource, result: LoadResult
    ) -> None:
        for volume in result.volumes:
            data, kwargs, _ = volume_to_layer_data(volume)
            layer = self._viewer.add_image(data, **kwargs)
            PACS_SOURCES[layer] = (server, source)
        skipped = f", {len(result.skipped)} instances left out" if result.skipped else ""
        self.status.value = f"Opened {len(result.volumes)} scan(s){skipped}"

    def _on_error(self, error: BaseException) -> None:
        if isinstance(error, CancelledError):
            show_info("Retrieval cancelled.")
            self.status.value = "Cancelled"
        elif isinstance(error, ScanClassifierError):
            show_error(str(error))
            self.status.value = str(error)
        else:
            show_error(f"The PACS request failed unexpectedly: {type(error).__name__}")
            self.status.value = "Failed"

    def _on_finished(self) -> None:
        self.worker = None
        self.progress_bar.stop()
        self._update_buttons()


@thread_worker(worker_class=GeneratorWorker, ignore_errors=True)
def _retrieval(
    source: DicomWebSource, server: DicomWebServer, cancel: threading.Event, cache: bool
):
    """Retrieve and load one series; yields progress reports."""
    step = partial(
        load_url,
        source.url,
        credentials=server.credentials,
        timeout=server.timeout,
        cancel=cancel.is_set,
        cache=cache,
    )
    return (yield from reporting(step, cancel))


def send_to_pacs(
    layer: Layer, volume: Volume, result: ScanResult, bundle: Bundle
) -> FunctionWorker | None:
    """Send a scan's report and saliency map to the PACS it was opened from, in a worker;
    None (after saying why) when the scan did not come from a PACS."""
    origin = PACS_SOURCES.get(layer)
    if origin is None:
        show_info("Only scans opened from a PACS can be sent back to it.")
        return None
    from napari_scan_classifier.dicom_results import send_results, series_description

    server, source = origin

    def done(_: Any) -> None:
        show_info(f"Sent to the PACS as new series '{series_description(bundle)}'.")

    def failed(error: BaseException) -> None:
        show_error(str(error) if isinstance(error, ScanClassifierError) else repr(error))

    worker = thread_worker(send_results, start_thread=False, ignore_errors=True)(
        server, source, volume, result, bundle
    )
    worker.returned.connect(done)
    worker.errored.connect(failed)
    worker.start()
    return worker
