"""DICOMweb against a real Orthanc: search, retrieve and classify by address, send the report and
the saliency map back, and the faults a user meets (wrong password, no server, no study, a server
that never answers, a cancelled retrieval).

A small CT series with a patient name and ID in every header is uploaded with STOW-RS; the same
files on disk are the reference for geometry. Orthanc runs with basic authentication on.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import tempfile
import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from model_fixtures import CLASSES, tiny_bundle
from orthanc_server import PASSWORD, USER, free_port, running_orthanc
from pydicom.uid import ParametricMapStorage, RawDataStorage, generate_uid

from napari_scan_classifier.cli import main
from napari_scan_classifier.dicom_results import (
    MAP_SERIES_NUMBER,
    REPORT_SERIES_NUMBER,
    model_hash,
    read_report,
)
from napari_scan_classifier.errors import CancelledError, DicomWebError
from napari_scan_classifier.io import load_scans
from napari_scan_classifier.io.dicom import list_series
from napari_scan_classifier.io.dicom_write import stack_geometry, write_series
from napari_scan_classifier.io.dicomweb import (
    ENV_PASSWORD,
    ENV_TOKEN,
    ENV_USER,
    Credentials,
    DicomWebServer,
    DicomWebSource,
    SeriesMatch,
    cache_root,
    load_url,
)
from napari_scan_classifier.io.nifti import load_nifti
from napari_scan_classifier.models import load_bundle, save_bundle
from napari_scan_classifier.phantoms import make_ct_phantom

PATIENT_NAME, PATIENT_ID, ACCESSION = "DOE^JANE", "NSC-4711", "ACC-0042"
SLICES = 12


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture(scope="module")
def ct_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CT series on disk, named after the patient as folders often are."""
    folder = tmp_path_factory.mktemp("DOE_JANE")
    volume = make_ct_phantom(3, shape=(SLICES, 40, 36), spacing=(2.5, 1.25, 1.5)).volume
    write_series(
        volume,
        folder,
        series_description="Abdomen",
        series_number=5,
        series_uid=generate_uid(),  # fixed dates (2000-01-01), so the date search is exact
        patient_name=PATIENT_NAME,
    )
    for path in folder.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.PatientID, ds.AccessionNumber = PATIENT_ID, ACCESSION
        ds.save_as(path)
    return folder


@pytest.fixture(scope="module")
def server(orthanc) -> DicomWebServer:
    return DicomWebServer(orthanc.dicomweb, Credentials(USER, PASSWORD), timeout=20)


@pytest.fixture(scope="module")
def study(server: DicomWebServer, ct_folder: Path) -> DicomWebSource:
    """The series, uploaded with STOW-RS; its series address."""
    datasets = [pydicom.dcmread(p) for p in sorted(ct_folder.glob("*.dcm"))]
    server.store(datasets)
    return DicomWebSource(
        server.base_url, datasets[0].StudyInstanceUID, datasets[0].SeriesInstanceUID
    )


@pytest.fixture
def basic_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_USER, USER)
    monkeypatch.setenv(ENV_PASSWORD, PASSWORD)
    monkeypatch.delenv(ENV_TOKEN, raising=False)


@pytest.fixture
def private_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Temporary files and the user's data folder inside the test's own folder."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return scratch


def test_search_finds_the_study_by_patient_id_date_modality_and_accession(
    server: DicomWebServer, study: DicomWebSource
) -> None:
    (match,) = server.search_studies(patient_id=PATIENT_ID)
    assert match.study_uid == study.study_uid
    assert (match.patient_name, match.patient_id) == (PATIENT_NAME, PATIENT_ID)
    assert (match.study_date, match.accession_number, match.modalities) == (
        "20000101",
        ACCESSION,
        "CT",
    )
    assert (match.series_count, match.instance_count) == (1, SLICES)
    found = server.search_studies(
        date_from="19991231", date_to="20000102", modality="CT", accession_number=ACCESSION
    )
    assert [m.study_uid for m in found] == [study.study_uid]
    assert server.search_studies(patient_id="NOBODY") == []
    assert server.search_studies(patient_id=PATIENT_ID, date_from="20010101") == []
    assert server.search_studies(patient_id=PATIENT_ID, modality="MR") == []
    (series,) = server.search_series(study.study_uid)
    assert (series.series_uid, series.modality, series.series_number) == (
        study.series_uid,
        "CT",
        5,
    )
    assert (series.description, series.instance_count) == ("Abdomen", SLICES)


def test_a_study_or_series_address_loads_exactly_like_the_files(
    study: DicomWebSource, ct_folder: Path, basic_auth: None, private_dirs: Path
) -> None:
    (on_disk,) = load_scans(ct_folder).volumes
    study_url = DicomWebSource(study.base_url, study.study_uid).url
    for url in (study.url, study_url):
        result = load_scans(url)
        (volume,) = result.volumes
        assert result.skipped == []
        np.testing.assert_array_equal(volume.voxels, on_disk.voxels)
        np.testing.assert_allclose(volume.affine, on_disk.affine, rtol=0, atol=1e-9)
        assert volume.spacing == pytest.approx((2.5, 1.25, 1.5), abs=1e-9)
        assert volume.metadata == on_disk.metadata
        assert PATIENT_NAME not in repr(volume.metadata)
    assert list(private_dirs.iterdir()) == []  # the retrieval folder is gone
    assert not cache_root().exists()  # caching is opt-in


def test_series_and_convert_commands_take_an_address(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    study: DicomWebSource,
    ct_folder: Path,
    basic_auth: None,
) -> None:
    assert main(["series", study.url, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    (expected,) = list_series(ct_folder)
    assert [(s["key"], s["shape"], s["description"]) for s in listed] == [
        (expected.key, list(expected.shape), "Abdomen")
    ]

    assert main(["convert", study.url, "--out", str(tmp_path / "nifti")]) == 0
    (written,) = (tmp_path / "nifti").glob("*.nii.gz")
    (on_disk,) = load_scans(ct_folder).volumes
    converted = load_nifti(written)
    np.testing.assert_allclose(converted.affine, on_disk.affine, atol=1e-4)
    np.testing.assert_array_equal(converted.voxels, on_disk.voxels)


@pytest.mark.slow
def test_classify_by_address_stores_a_report_and_an_aligned_saliency_map(
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    server: DicomWebServer,
    study: DicomWebSource,
    ct_folder: Path,
    basic_auth: None,
    private_dirs: Path,
) -> None:
    bundle_dir = save_bundle(tiny_bundle(), tmp_path / "model")
    out, maps = tmp_path / "results.json", tmp_path / "maps"
    caplog.set_level(logging.DEBUG)

    code = main(
        [
            "classify",
            DicomWebSource(study.base_url, study.study_uid).url,
            "--model",
            str(bundle_dir),
            "--out",
            str(out),
            "--saliency-dir",
            str(maps),
            "--passes",
            "3",
            "--store-results",
        ]
    )

    captured = capsys.readouterr()
    assert code == 0, captured.err
    (row,) = json.loads(out.read_text())["series"]
    assert row["status"] == "classified"
    assert "stored a report and a saliency map on the DICOMweb server" in captured.out
    printed = captured.out + captured.err + caplog.text + out.read_text()
    for secret in (PATIENT_NAME, "DOE", PATIENT_ID, PASSWORD, ct_folder.name):
        assert secret not in printed

    series = {s.series_number: s for s in server.search_series(study.study_uid)}
    assert sorted(series) == [5, REPORT_SERIES_NUMBER, MAP_SERIES_NUMBER]
    assert series[REPORT_SERIES_NUMBER].description == "scan-classifier: sphere-test v1"
    (report,) = server._client.retrieve_series(
        study.study_uid, series[REPORT_SERIES_NUMBER].series_uid
    )
    (saliency,) = server._client.retrieve_series(
        study.study_uid, series[MAP_SERIES_NUMBER].series_uid
    )

    # The report: same patient and study, references the source series, holds the result.
    assert (report.PatientName, report.PatientID) == (PATIENT_NAME, PATIENT_ID)
    assert report.StudyInstanceUID == study.study_uid
    (evidence,) = report.CurrentRequestedProcedureEvidenceSequence
    (referenced,) = evidence.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == study.series_uid
    assert len(referenced.ReferencedSOPSequence) == SLICES
    values = read_report(report)
    assert values["Predicted class"] == row["predicted_class"]
    for name in CLASSES:
        assert values[f"Probability of {name}"] == pytest.approx(
            row["probabilities"][name], abs=1e-6
        )
        assert values[f"SD of probability of {name}"] == pytest.approx(
            row["uncertainty"]["std"][name], abs=1e-6
        )
    assert values["Algorithm Name"] == "sphere-test"
    assert values["Algorithm Version"] == "1"
    assert values["Algorithm Parameters"] == f"sha256 {model_hash(load_bundle(bundle_dir))}"

    # The map: a Parametric Map whose frames lie on the source slices, holding the saliency.
    assert saliency.SOPClassUID == ParametricMapStorage
    assert saliency.StudyInstanceUID == study.study_uid
    assert saliency.NumberOfFrames == SLICES
    (map_source,) = saliency.ReferencedSeriesSequence
    assert map_source.SeriesInstanceUID == study.series_uid
    assert len(map_source.ReferencedInstanceSequence) == SLICES
    sources = sorted(
        (pydicom.dcmread(p, stop_before_pixels=True) for p in ct_folder.glob("*.dcm")),
        key=lambda ds: ds.InstanceNumber,
    )
    shared = saliency.SharedFunctionalGroupsSequence[0]
    measures = shared.PixelMeasuresSequence[0]
    assert [float(v) for v in measures.PixelSpacing] == [1.25, 1.5]
    assert float(measures.SpacingBetweenSlices) == pytest.approx(2.5, abs=1e-9)
    orientation = shared.PlaneOrientationSequence[0].ImageOrientationPatient
    np.testing.assert_allclose(orientation, sources[0].ImageOrientationPatient, atol=1e-9)
    frames = {
        tuple(round(float(v), 6) for v in frame.PlanePositionSequence[0].ImagePositionPatient): f
        for f, frame in enumerate(saliency.PerFrameFunctionalGroupsSequence)
    }
    slices = [tuple(round(float(v), 6) for v in ds.ImagePositionPatient) for ds in sources]
    assert sorted(frames) == sorted(slices)  # one frame on every source slice, in mm
    (map_file,) = maps.glob("*.nii.gz")
    on_grid = load_nifti(map_file)  # the same map on the scan's grid, as NIfTI
    geometry = stack_geometry(on_grid.affine)
    at = np.array(list(frames))
    for k, plane in enumerate(on_grid.voxels):
        distances = np.linalg.norm(at - geometry.position(k), axis=1)
        assert distances.min() < 1e-3  # NIfTI keeps its affine in float32
        frame = frames[tuple(at[int(distances.argmin())])]
        np.testing.assert_allclose(saliency.pixel_array[frame], plane, atol=1e-6)


def test_a_wrong_password_is_refused_with_a_clear_message(
    capsys: pytest.CaptureFixture[str], study: DicomWebSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_USER, USER)
    monkeypatch.setenv(ENV_PASSWORD, "wrong-guess-123")

    assert main(["series", study.url]) == 2

    err = capsys.readouterr().err
    host = study.base_url.split("//")[1].split("/")[0]
    assert err == (
        f"error: the DICOMweb server at {host} refused the credentials (HTTP 401): set "
        "NSC_DICOMWEB_USER and NSC_DICOMWEB_PASSWORD, or NSC_DICOMWEB_TOKEN, or type them in\n"
    )
    assert "wrong-guess-123" not in err


def test_credentials_never_show_and_a_token_is_sent_as_bearer() -> None:
    import requests

    session = requests.Session()
    token = Credentials(token="tok-SECRET")
    token.apply(session)
    assert session.headers["Authorization"] == "Bearer tok-SECRET"
    basic = Credentials.from_env({ENV_USER: "u", ENV_PASSWORD: "pw-SECRET"})
    basic.apply(session)
    assert session.auth == ("u", "pw-SECRET")
    assert (repr(token), repr(basic)) == ("Credentials(bearer)", "Credentials(basic)")
    assert repr(DicomWebServer("http://u:pw-SECRET@host:1/dicom-web")) == "DicomWebServer(host:1)"


def test_an_unreachable_server_a_missing_study_and_a_silent_server(
    server: DicomWebServer, study: DicomWebSource
) -> None:
    port = free_port()
    with pytest.raises(DicomWebError) as unreachable:
        DicomWebServer(f"http://127.0.0.1:{port}/dicom-web", timeout=5).search_studies()
    assert str(unreachable.value) == (
        f"the DICOMweb server at 127.0.0.1:{port} cannot be reached (study search): is the "
        "address right and the server up?"
    )

    missing = DicomWebSource(server.base_url, "1.2.3.4.5.6.7")
    with pytest.raises(DicomWebError) as no_study:
        server.series_of(missing)
    assert str(no_study.value).endswith("has no such study (none found)")
    absent = SeriesMatch("1.2.3.4.5.6.7", "1.2.3.4.5.6.8", "CT", 1, "", 3)
    with pytest.raises(DicomWebError) as not_found:
        server.fetch_series(absent, Path(tempfile.mkdtemp()))
    assert str(not_found.value).endswith("has no such study or series (HTTP 404)")

    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"http://127.0.0.1:{silent.getsockname()[1]}/dicom-web"
        with pytest.raises(DicomWebError) as slow:
            DicomWebServer(address, timeout=0.5).search_studies(patient_id="X")
    assert str(slow.value).endswith("did not answer the study search within 0.5 s")


def test_a_cancelled_retrieval_leaves_no_files(
    study: DicomWebSource, private_dirs: Path, basic_auth: None
) -> None:
    cancel = threading.Event()

    def progress(done: int, total: int, message: str) -> None:
        if message.startswith("Retrieving") and done == 4:
            cancel.set()

    for cache in (False, True):
        cancel.clear()
        with pytest.raises(
            CancelledError, match="retrieval from the DICOMweb server was cancelled"
        ):
            load_url(study.url, cache=cache, progress=progress, cancel=cancel.is_set)
        assert list(private_dirs.iterdir()) == []
        assert not cache_root().exists() or list(cache_root().iterdir()) == []


def test_the_opt_in_cache_keeps_complete_series_under_the_data_folder(
    tmp_path: Path, study: DicomWebSource, ct_folder: Path, private_dirs: Path, basic_auth: None
) -> None:
    (on_disk,) = load_scans(ct_folder).volumes
    first = load_url(study.url, cache=True).volumes[0]
    (cached,) = cache_root().iterdir()
    assert cache_root().is_relative_to(tmp_path / "data")
    assert len(list(cached.glob("*.dcm"))) == SLICES and (cached / ".complete").exists()
    again = load_url(study.url, cache=True).volumes[0]
    for volume in (first, again):
        np.testing.assert_array_equal(volume.voxels, on_disk.voxels)
        np.testing.assert_allclose(volume.affine, on_disk.affine, atol=1e-9)


def test_instances_the_loader_refuses_are_named_by_place_not_uid(
    tmp_path: Path, server: DicomWebServer, basic_auth: None, private_dirs: Path
) -> None:
    """A series whose server also holds a non-image object: the scan loads, the object is left
    out with the loader's reason, named by its place in the retrieval."""
    volume = make_ct_phantom(4, shape=(4, 24, 24), spacing=(3.0, 2.0, 2.0)).volume
    paths = write_series(volume, tmp_path / "ct", series_uid=generate_uid(), patient_name="X^Y")
    datasets = [pydicom.dcmread(p) for p in paths]
    odd = pydicom.dcmread(paths[0])
    del odd.PixelData
    odd.SOPClassUID = odd.file_meta.MediaStorageSOPClassUID = RawDataStorage
    odd.SOPInstanceUID = odd.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    server.store([*datasets, odd])
    source = DicomWebSource(server.base_url, odd.StudyInstanceUID, odd.SeriesInstanceUID)

    result = load_url(source.url)

    (loaded,) = result.volumes
    assert loaded.shape == (4, 24, 24)
    (skipped,) = result.skipped
    assert re.fullmatch(r"file [1-5] of retrieved series 1", skipped.label)
    assert skipped.reason == "DICOM file without image data"
    assert odd.SOPInstanceUID not in str(skipped)


def test_search_dates_must_be_yyyymmdd() -> None:
    with pytest.raises(DicomWebError) as bad:
        DicomWebServer("http://127.0.0.1:9/dicom-web").search_studies(date_from="2024-01-31")
    assert str(bad.value) == "dates are written YYYYMMDD (e.g. 20240131), not '2024-01-31'"


def test_a_cached_series_that_grew_on_the_server_is_fetched_again(
    tmp_path: Path, server: DicomWebServer, private_dirs: Path, basic_auth: None
) -> None:
    volume = make_ct_phantom(6, shape=(5, 16, 16), spacing=(2.0, 2.0, 2.0)).volume
    paths = write_series(volume, tmp_path / "ct", series_uid=generate_uid())
    datasets = [pydicom.dcmread(p) for p in paths]
    server.store(datasets[:4])
    source = DicomWebSource(
        server.base_url, datasets[0].StudyInstanceUID, datasets[0].SeriesInstanceUID
    )
    assert load_url(source.url, cache=True).volumes[0].shape == (4, 16, 16)

    server.store(datasets[4:])

    (again,) = load_url(source.url, cache=True).volumes
    (on_disk,) = load_scans(tmp_path / "ct").volumes
    assert again.shape == (5, 16, 16)
    np.testing.assert_array_equal(again.voxels, on_disk.voxels)


def test_a_half_series_is_refused_with_its_count(
    orthanc, server: DicomWebServer, ct_folder: Path
) -> None:
    """The search lists every instance, then one goes missing before retrieval (a study still
    arriving or damaged on the server): the retrieval is refused, not loaded with a gap."""
    series_uid = generate_uid()
    datasets = []
    for path in sorted(ct_folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = series_uid, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        datasets.append(ds)
    server.store(datasets)
    source = DicomWebSource(server.base_url, datasets[0].StudyInstanceUID, series_uid)
    (listed,) = server.series_of(source)
    assert listed.instance_count == SLICES

    auth = (USER, PASSWORD)
    lookup = requests.post(
        f"{orthanc.url}/tools/lookup", data=datasets[3].SOPInstanceUID, auth=auth, timeout=10
    )
    (found,) = lookup.json()
    requests.delete(f"{orthanc.url}/instances/{found['ID']}", auth=auth, timeout=10)

    with pytest.raises(DicomWebError) as half:
        server.fetch_series(listed, Path(tempfile.mkdtemp()))
    assert str(half.value) == (
        f"the DICOMweb server at {server.base_url.split('/')[2]} sent {SLICES - 1} of the "
        f"{SLICES} instances it lists for this series: the study is incomplete on the server "
        "or changed during retrieval; try again later"
    )
