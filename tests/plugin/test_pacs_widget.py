"""The "Open from PACS" dock against a real Orthanc: it searches, lists series, opens one as a layer
equal to the files on disk, and the Classify dock sends the result back; a wrong password and a
cancelled retrieval end with one clear message and no layer. Patient fields show in the study
list and nowhere else.

With ``NSC_SCREENSHOT_DIR`` set, the dock with its search result is saved there as a PNG.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from model_fixtures import tiny_bundle
from napari.components import ViewerModel
from napari.utils.notifications import Notification, NotificationSeverity
from orthanc_server import PASSWORD, USER, running_orthanc
from pydicom.uid import generate_uid
from pytestqt.qtbot import QtBot

from napari_scan_classifier.dicom_results import REPORT_SERIES_NUMBER, read_report
from napari_scan_classifier.io import load_scans
from napari_scan_classifier.io.dicom_write import write_series
from napari_scan_classifier.io.dicomweb import Credentials, DicomWebServer, cache_root
from napari_scan_classifier.models import save_bundle
from napari_scan_classifier.phantoms import make_ct_phantom
from napari_scan_classifier.plugin.layers import VOLUME_KEY, volume_to_layer_data
from napari_scan_classifier.plugin.widgets.classify import CLASSIFICATION_KEY, ClassifyWidget
from napari_scan_classifier.plugin.widgets.pacs import PacsWidget

PATIENT_NAME, PATIENT_ID, ACCESSION = "ROE^RICHARD", "NSC-0815", "ACC-77"
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture(scope="module")
def ct_folder(orthanc, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CT series with patient fields in its headers, on disk and uploaded to Orthanc."""
    folder = tmp_path_factory.mktemp("ROE_RICHARD")
    volume = make_ct_phantom(5, shape=(10, 32, 30), spacing=(3.0, 1.5, 1.25)).volume
    write_series(
        volume,
        folder,
        series_description="Chest",
        series_number=2,
        series_uid=generate_uid(),
        patient_name=PATIENT_NAME,
    )
    datasets = []
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.PatientID, ds.AccessionNumber = PATIENT_ID, ACCESSION
        ds.save_as(path)
        datasets.append(ds)
    DicomWebServer(orthanc.dicomweb, Credentials(USER, PASSWORD)).store(datasets)
    return folder


def _dock(viewer: ViewerModel, orthanc, password: str = PASSWORD) -> PacsWidget:
    widget = PacsWidget(viewer)
    widget.server.value = orthanc.dicomweb
    widget.auth.value = "basic"
    widget.user.value, widget.password.value = USER, password
    widget.patient_id.value = PATIENT_ID
    return widget


def _wait(qtbot: QtBot, widget: PacsWidget) -> None:
    assert widget.worker is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)


def _row(table, row: int) -> list[str]:
    return [table.item(row, column).text() for column in range(table.columnCount())]


def _search_and_choose(qtbot: QtBot, widget: PacsWidget) -> None:
    widget.search_button.clicked.emit()
    _wait(qtbot, widget)
    widget.studies.selectRow(0)
    _wait(qtbot, widget)
    widget.series.selectRow(0)


def _messages(notifications: list[Notification], severity: NotificationSeverity) -> list[str]:
    return [n.message for n in notifications if n.severity == severity]


@pytest.mark.slow
def test_search_open_classify_and_send_back(
    viewer: ViewerModel,
    qtbot: QtBot,
    orthanc,
    ct_folder: Path,
    tmp_path: Path,
    notifications: list[Notification],
    caplog: pytest.LogCaptureFixture,
) -> None:
    widget = _dock(viewer, orthanc)
    widget.search_button.clicked.emit()
    _wait(qtbot, widget)

    assert widget.studies.rowCount() == 1
    assert _row(widget.studies, 0) == [PATIENT_ID, PATIENT_NAME, "20000101", ACCESSION, "CT", ""]
    assert widget.status.value == "1 study found"
    widget.studies.selectRow(0)
    _wait(qtbot, widget)
    assert _row(widget.series, 0) == ["2", "CT", "Chest", "10"]
    widget.series.selectRow(0)
    assert widget.open_button.enabled
    widget.open_button.clicked.emit()
    _wait(qtbot, widget)

    (layer,) = viewer.layers
    (on_disk,) = load_scans(ct_folder).volumes
    expected_data, expected, _ = volume_to_layer_data(on_disk)
    assert layer.name == expected["name"] == "CT #2 Chest"
    np.testing.assert_array_equal(layer.data, expected_data)
    np.testing.assert_allclose(layer.affine.affine_matrix, expected["affine"], atol=1e-9)
    np.testing.assert_allclose(layer.metadata[VOLUME_KEY].affine, on_disk.affine, atol=1e-9)
    if os.environ.get("NSC_SCREENSHOT_DIR") and hasattr(viewer, "window"):
        viewer.window.add_dock_widget(widget, name="Open from PACS", area="right")
        viewer.window.resize(1500, 900)
        qtbot.wait(500)
        viewer.screenshot(
            Path(os.environ["NSC_SCREENSHOT_DIR"]) / "pacs_dock.png", canvas_only=False
        )

    classify = ClassifyWidget(viewer)
    classify.model.value = save_bundle(tiny_bundle(), tmp_path / "model")
    classify.passes.value, classify.check.value = 2, False
    assert classify.scan.value is layer and not classify.send_button.enabled
    classify.run_button.clicked.emit()
    qtbot.waitUntil(lambda: classify.worker is None, timeout=WAIT_MS)
    assert classify.send_button.enabled
    classify.send_button.clicked.emit()
    sent = "Sent to the PACS as new series 'scan-classifier: sphere-test v1'."
    qtbot.waitUntil(
        lambda: sent in _messages(notifications, NotificationSeverity.INFO), timeout=WAIT_MS
    )

    server = DicomWebServer(orthanc.dicomweb, Credentials(USER, PASSWORD))
    study_uid = layer_study = server.search_studies(patient_id=PATIENT_ID)[0].study_uid
    reports = [
        s for s in server.search_series(study_uid) if s.series_number == REPORT_SERIES_NUMBER
    ]
    (report,) = server._client.retrieve_series(layer_study, reports[-1].series_uid)
    result = layer.metadata[CLASSIFICATION_KEY]
    values = read_report(report)
    assert values["Predicted class"] == result["predicted_class"]
    for name, p in result["probabilities"].items():
        assert values[f"Probability of {name}"] == pytest.approx(p, abs=1e-6)

    shown = [layer.name for layer in viewer.layers] + [n.message for n in notifications]
    shown += [caplog.text, repr({k: v for k, v in layer.metadata.items() if k != VOLUME_KEY})]
    shown += [repr(layer.metadata[VOLUME_KEY].metadata)]
    for secret in (PATIENT_NAME, "ROE", PATIENT_ID, ACCESSION, PASSWORD, ct_folder.name):
        assert all(secret not in text for text in shown)


def test_a_wrong_password_is_one_clear_notification(
    viewer: ViewerModel, qtbot: QtBot, orthanc, ct_folder: Path, notifications: list[Notification]
) -> None:
    widget = _dock(viewer, orthanc, password="not-the-password")
    widget.search_button.clicked.emit()
    _wait(qtbot, widget)

    host = orthanc.dicomweb.split("//")[1].split("/")[0]
    assert _messages(notifications, NotificationSeverity.ERROR) == [
        f"the DICOMweb server at {host} refused the credentials (HTTP 401): set "
        "NSC_DICOMWEB_USER and NSC_DICOMWEB_PASSWORD, or NSC_DICOMWEB_TOKEN, or type them in"
    ]
    assert widget.studies.rowCount() == 0 and widget.search_button.enabled


def test_a_cancelled_retrieval_adds_no_layer(
    viewer: ViewerModel, qtbot: QtBot, orthanc, ct_folder: Path, notifications: list[Notification]
) -> None:
    widget = _dock(viewer, orthanc)
    _search_and_choose(qtbot, widget)

    widget.open_button.clicked.emit()
    assert widget.cancel_button.enabled
    widget.cancel_button.clicked.emit()
    _wait(qtbot, widget)

    assert list(viewer.layers) == []
    assert "Retrieval cancelled." in _messages(notifications, NotificationSeverity.INFO)
    assert widget.status.value == "Cancelled" and widget.open_button.enabled


def test_a_ticked_cache_keeps_the_series_under_the_data_folder(
    viewer: ViewerModel,
    qtbot: QtBot,
    orthanc,
    ct_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    widget = _dock(viewer, orthanc)
    widget.cache.value = True
    _search_and_choose(qtbot, widget)

    widget.open_button.clicked.emit()
    _wait(qtbot, widget)

    (layer,) = viewer.layers
    assert layer.name == "CT #2 Chest"
    assert cache_root().is_relative_to(tmp_path / "data")
    (cached,) = cache_root().iterdir()
    assert len(list(cached.glob("*.dcm"))) == 10
