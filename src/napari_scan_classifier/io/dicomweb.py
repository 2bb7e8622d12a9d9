"""Scans on a DICOMweb server (a PACS, Orthanc, a cloud archive): search, retrieve and store.

Searching uses QIDO-RS, retrieval WADO-RS and storing STOW-RS, all through ``dicomweb-client``.
A retrieved series is streamed instance by instance into a folder and read by the same DICOM
loader as files on disk, so geometry, checks and de-identification are the loader's, and a large
study is never held twice in memory. The folder is temporary unless caching is asked for; the
cache lives under the user's data folder.

Credentials come from the environment (``NSC_DICOMWEB_USER`` and ``NSC_DICOMWEB_PASSWORD``, or
``NSC_DICOMWEB_TOKEN``) or from the caller; they are kept in memory only and never printed.
Patient fields are returned by the searches (that is how a user finds a study) and go nowhere else.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import platformdirs
import requests
from dicomweb_client import DICOMwebClient
from pydicom import dcmwrite
from pydicom.dataset import Dataset

from napari_scan_classifier.errors import CancelledError, DicomWebError, UnreadableScanError
from napari_scan_classifier.io import LoadResult, SkippedFile

if TYPE_CHECKING:
    from napari_scan_classifier.io.dicom import SeriesInfo

ENV_USER = "NSC_DICOMWEB_USER"
ENV_PASSWORD = "NSC_DICOMWEB_PASSWORD"
ENV_TOKEN = "NSC_DICOMWEB_TOKEN"
ENV_CACHE = "NSC_DICOMWEB_CACHE"
DEFAULT_TIMEOUT = 30.0  # seconds without an answer before a request gives up
_COMPLETE = ".complete"  # marks a cached series whose every instance arrived
_DATE = re.compile(r"\d{8}")
_URL = re.compile(
    r"^(?P<base>https?://[^?#]+?)/studies/(?P<study>[0-9.]+)(?:/series/(?P<series>[0-9.]+))?/?$"
)

# The client's debug lines carry search values (patient IDs): keep them out of any log.
logging.getLogger("dicomweb_client").setLevel(logging.WARNING)

Progress = Callable[[int, int, str], None]
Cancel = Callable[[], bool]


def is_dicomweb_url(source: object) -> bool:
    """True for an ``http(s)://`` address (a path never starts so)."""
    return isinstance(source, str) and source.lower().startswith(("http://", "https://"))


@dataclass(frozen=True)
class DicomWebSource:
    """A study (``series_uid`` None) or one series on a DICOMweb server."""

    base_url: str
    study_uid: str
    series_uid: str | None = None

    @classmethod
    def parse(cls, url: str) -> DicomWebSource:
        match = _URL.match(url.strip())
        if match is None:
            raise DicomWebError(
                "not a DICOMweb study or series address: expected "
                "http(s)://HOST/.../studies/STUDY_UID or .../studies/STUDY_UID/series/SERIES_UID"
            )
        return cls(match["base"], match["study"], match["series"])

    @property
    def url(self) -> str:
        series = f"/series/{self.series_uid}" if self.series_uid else ""
        return f"{self.base_url}/studies/{self.study_uid}{series}"

    @property
    def kind(self) -> str:
        return "series" if self.series_uid else "study"


@dataclass(frozen=True)
class Credentials:
    """HTTP basic (user, password) or a bearer token. ``repr`` never shows the secret."""

    user: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Credentials:
        env = os.environ if environ is None else environ
        return cls(env.get(ENV_USER) or None, env.get(ENV_PASSWORD), env.get(ENV_TOKEN) or None)

    @property
    def scheme(self) -> str:
        return "bearer" if self.token else "basic" if self.user else "none"

    def __repr__(self) -> str:
        return f"Credentials({self.scheme})"

    def apply(self, session: requests.Session) -> None:
        if self.token:
            session.headers["Authorization"] = f"Bearer {self.token}"
        elif self.user:
            session.auth = (self.user, self.password or "")


@dataclass(frozen=True)
class StudyMatch:
    """A study found by a search. Patient fields are for the search list only."""

    study_uid: str
    patient_id: str
    patient_name: str
    study_date: str
    accession_number: str
    modalities: str
    description: str
    series_count: int | None
    instance_count: int | None


@dataclass(frozen=True)
class SeriesMatch:
    """A series of a study: no patient field."""

    study_uid: str
    series_uid: str
    modality: str
    series_number: int | None
    description: str
    instance_count: int | None


def _value(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value") or [None]
    value = values[0]
    if isinstance(value, dict):  # a person name
        return value.get("Alphabetic", "")
    return value


def _text(item: dict[str, Any], tag: str) -> str:
    return "\\".join(str(v) for v in item.get(tag, {}).get("Value") or [] if v is not None)


def _count(item: dict[str, Any], tag: str) -> int | None:
    value = _value(item, tag)
    return None if value is None else int(value)


class DicomWebServer:
    """One DICOMweb endpoint (its base address, e.g. ``http://host:8042/dicom-web``)."""

    def __init__(
        self,
        base_url: str,
        credentials: Credentials | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if not is_dicomweb_url(base_url):
            raise DicomWebError("the DICOMweb server address must start with http:// or https://")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.credentials = credentials or Credentials.from_env()
        self._host = urlsplit(self.base_url).netloc.rsplit("@", 1)[-1]
        session = requests.Session()
        self.credentials.apply(session)
        self._client = DICOMwebClient(self.base_url, session=session, timeout=timeout)
        self._client.set_http_retry_params(retry=False)

    def __repr__(self) -> str:
        return f"DicomWebServer({self._host})"

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn HTTP and network failures into one line that says what to do."""
        where = f"the DICOMweb server at {self._host}"
        try:
            yield
        except requests.exceptions.HTTPError as error:
            status = error.response.status_code if error.response is not None else 0
            raise DicomWebError(_http_message(where, status, what)) from None
        except requests.exceptions.Timeout:
            raise DicomWebError(
                f"{where} did not answer the {what} within {self.timeout:g} s"
            ) from None
        except requests.exceptions.ConnectionError:
            raise DicomWebError(
                f"{where} cannot be reached ({what}): is the address right and the server up?"
            ) from None
        except requests.exceptions.RequestException as error:
            raise DicomWebError(f"{where}: the {what} failed ({type(error).__name__})") from None

    def search_studies(
        self,
        *,
        patient_id: str = "",
        date_from: str = "",
        date_to: str = "",
        modality: str = "",
        accession_number: str = "",
        limit: int = 100,
    ) -> list[StudyMatch]:
        """Studies matching every given field (dates as YYYYMMDD; empty fields match all)."""
        for date in (date_from, date_to):
            if date and not _DATE.fullmatch(date):
                raise DicomWebError(f"dates are written YYYYMMDD (e.g. 20240131), not {date!r}")
        filters = {
            "PatientID": patient_id,
            "ModalitiesInStudy": modality,
            "AccessionNumber": accession_number,
        }
        if date_from or date_to:
            filters["StudyDate"] = f"{date_from}-{date_to}"
        fields = ["PatientName", "StudyDescription", "NumberOfStudyRelatedSeries"]
        fields += ["NumberOfStudyRelatedInstances", "ModalitiesInStudy"]
        with self._errors("study search"):
            found = self._client.search_for_studies(
                search_filters={k: v for k, v in filters.items() if v},
                fields=fields,
                limit=limit,
            )
        return [
            StudyMatch(
                study_uid=_value(item, "0020000D"),
                patient_id=_value(item, "00100020") or "",
                patient_name=_value(item, "00100010") or "",
                study_date=_value(item, "00080020") or "",
                accession_number=_value(item, "00080050") or "",
                modalities=_text(item, "00080061"),
                description=_value(item, "00081030") or "",
                series_count=_count(item, "00201206"),
                instance_count=_count(item, "00201208"),
            )
            for item in found
        ]

    def search_series(self, study_uid: str) -> list[SeriesMatch]:
        """The series of a study, by series number."""
        with self._errors("series search"):
            found = self._client.search_for_series(
                study_uid, fields=["SeriesDescription", "NumberOfSeriesRelatedInstances"]
            )
        series = [
            SeriesMatch(
                study_uid=study_uid,
                series_uid=_value(item, "0020000E"),
                modality=_value(item, "00080060") or "",
                series_number=_count(item, "00200011"),
                description=_value(item, "0008103E") or "",
                instance_count=_count(item, "00201209"),
            )
            for item in found
        ]
        return sorted(series, key=lambda s: (s.series_number is None, s.series_number or 0))

    def series_of(self, source: DicomWebSource) -> list[SeriesMatch]:
        """The series a study or series address stands for (a missing one is an error)."""
        series = self.search_series(source.study_uid)
        if source.series_uid:
            series = [s for s in series if s.series_uid == source.series_uid]
        if not series:
            raise DicomWebError(
                f"the DICOMweb server at {self._host} has no such {source.kind} (none found)"
            )
        return series

    def fetch_series(
        self,
        series: SeriesMatch,
        folder: Path,
        *,
        progress: Progress | None = None,
        cancel: Cancel | None = None,
    ) -> int:
        """Stream every instance of ``series`` into ``folder``, one file each; their count."""
        folder.mkdir(parents=True, exist_ok=True)
        total = series.instance_count or 0
        count = 0
        with self._errors("retrieval"):
            stream = self._client.iter_series(series.study_uid, series.series_uid)
            try:
                for dataset in stream:
                    if cancel is not None and cancel():
                        raise CancelledError("retrieval from the DICOMweb server was cancelled")
                    count += 1
                    _save(dataset, folder / f"instance_{count:05d}.dcm")
                    if progress is not None:
                        progress(count, max(total, count), "Retrieving from DICOMweb")
            finally:
                stream.close()
        _check_complete(series, count, self._host)
        return count

    def series_headers(self, study_uid: str, series_uid: str) -> list[Dataset]:
        """Every instance's header (no pixel data), from the series metadata."""
        with self._errors("metadata retrieval"):
            items = self._client.retrieve_series_metadata(study_uid, series_uid)
        return [Dataset.from_json(item, bulk_data_uri_handler=lambda *_: b"") for item in items]

    def store(self, datasets: Sequence[Dataset]) -> None:
        """Store ``datasets`` on the server (STOW-RS) in the study they belong to."""
        with self._errors("upload"):
            response = self._client.store_instances(list(datasets))
        failed = response.get("FailedSOPSequence") if response is not None else None
        if failed:
            raise DicomWebError(
                f"the DICOMweb server at {self._host} refused {len(failed)} of "
                f"{len(datasets)} uploaded objects"
            )


def _check_complete(series: SeriesMatch, count: int, host: str) -> None:
    """A series that arrives with fewer instances than the search listed is a half study
    (still arriving, or damaged on the server): refused rather than classified with gaps."""
    expected = series.instance_count
    if expected is not None and count < expected:
        raise DicomWebError(
            f"the DICOMweb server at {host} sent {count} of the {expected} instances it lists "
            "for this series: the study is incomplete on the server or changed during "
            "retrieval; try again later"
        )


def _http_message(where: str, status: int, what: str) -> str:
    if status == 401:
        return (
            f"{where} refused the credentials (HTTP 401): set {ENV_USER} and {ENV_PASSWORD}, "
            f"or {ENV_TOKEN}, or type them in"
        )
    if status == 403:
        return f"{where} denied access (HTTP 403): these credentials may not do the {what}"
    if status == 404:
        return f"{where} has no such study or series (HTTP 404)"
    return f"{where} answered HTTP {status} to the {what}"


def _save(dataset: Dataset, path: Path) -> None:
    """Encode in memory, then one write (pydicom writes element by element)."""
    buffer = io.BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(buffer.getbuffer())
    os.replace(partial, path)


def cache_root() -> Path:
    """Where cached series live: under the user's data folder, never beside results."""
    return Path(platformdirs.user_data_dir("napari-scan-classifier")) / "dicomweb-cache"


def _cache_folder(series: SeriesMatch, base_url: str) -> Path:
    key = hashlib.sha256(f"{base_url}|{series.study_uid}|{series.series_uid}".encode()).hexdigest()
    return cache_root() / key[:24]


def caching_default() -> bool:
    """Caching is off unless ``NSC_DICOMWEB_CACHE=1``."""
    return os.environ.get(ENV_CACHE, "") == "1"


@contextlib.contextmanager
def retrieved(
    source: DicomWebSource,
    server: DicomWebServer,
    *,
    cache: bool = False,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> Iterator[list[Path]]:
    """Local folders, one per series of ``source``, holding its instances while in use.

    Without ``cache`` they are temporary and removed afterwards, even on error or cancel.
    With it, each complete series stays under :func:`cache_root` and is not fetched again.
    """
    series = server.series_of(source)
    with tempfile.TemporaryDirectory(prefix="nsc-dicomweb-") as scratch:
        folders = []
        for number, item in enumerate(series, start=1):
            if cache:
                folders.append(_cached(server, item, progress, cancel))
                continue
            folder = Path(scratch) / f"series_{number:03d}"
            server.fetch_series(item, folder, progress=progress, cancel=cancel)
            folders.append(folder)
        yield folders


def _cached(
    server: DicomWebServer, series: SeriesMatch, progress: Progress | None, cancel: Cancel | None
) -> Path:
    """The cached copy of ``series``, fetched anew unless complete and as large as the server
    says the series is now (instances added since are not missed)."""
    folder = _cache_folder(series, server.base_url)
    if (folder / _COMPLETE).exists():
        held = sum(1 for _ in folder.glob("instance_*.dcm"))
        if series.instance_count is None or held == series.instance_count:
            return folder
    shutil.rmtree(folder, ignore_errors=True)
    try:
        server.fetch_series(series, folder, progress=progress, cancel=cancel)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    (folder / _COMPLETE).touch()
    return folder


def _server_for(
    source: DicomWebSource, credentials: Credentials | None, timeout: float
) -> DicomWebServer:
    return DicomWebServer(source.base_url, credentials or Credentials.from_env(), timeout)


def load_url(
    url: str,
    *,
    credentials: Credentials | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    cache: bool | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> LoadResult:
    """Every scan of a DICOMweb study or series address, read by the DICOM loader.

    Skipped instances are named by their place in the retrieval (``file 7 of retrieved series
    1``), never by a UID. ``cache`` None follows ``NSC_DICOMWEB_CACHE``. Raises the first loader
    error when no series could be read.
    """
    from napari_scan_classifier.io.dicom import load_dicom

    source = DicomWebSource.parse(url)
    server = _server_for(source, credentials, timeout)
    use_cache = caching_default() if cache is None else cache
    result = LoadResult([])
    errors: list[UnreadableScanError] = []
    with retrieved(source, server, cache=use_cache, progress=progress, cancel=cancel) as folders:
        for number, folder in enumerate(folders, start=1):
            try:
                loaded = load_dicom(folder, progress=progress, cancel=cancel)
            except UnreadableScanError as error:
                errors.append(error)
                continue
            result.volumes.extend(loaded.volumes)
            result.skipped.extend(_renamed(s, number) for s in loaded.skipped)
    if not result.volumes and errors:
        raise errors[0]
    return result


def list_series_url(
    url: str, *, credentials: Credentials | None = None, timeout: float = DEFAULT_TIMEOUT
) -> list[SeriesInfo]:
    """What :func:`~napari_scan_classifier.io.dicom.list_series` tells, for a DICOMweb address."""
    from napari_scan_classifier.io.dicom import list_series

    source = DicomWebSource.parse(url)
    server = _server_for(source, credentials, timeout)
    with retrieved(source, server, cache=caching_default()) as folders:
        return [info for folder in folders for info in list_series(folder)]


def _renamed(skipped: SkippedFile, series_number: int) -> SkippedFile:
    """Instance files sort in retrieval order; add the series' place in the study."""
    return replace(skipped, within=f"retrieved series {series_number}")


__all__ = [
    "DEFAULT_TIMEOUT",
    "ENV_CACHE",
    "ENV_PASSWORD",
    "ENV_TOKEN",
    "ENV_USER",
    "Credentials",
    "DicomWebServer",
    "DicomWebSource",
    "SeriesMatch",
    "StudyMatch",
    "cache_root",
    "is_dicomweb_url",
    "list_series_url",
    "load_url",
    "retrieved",
]
