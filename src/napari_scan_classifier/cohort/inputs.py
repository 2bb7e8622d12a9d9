"""What a cohort is made of: the inputs given, and the series found under them from headers only."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_scan_classifier.errors import ScanClassifierError, UnreadableScanError
from napari_scan_classifier.limits import special_file_reason
from napari_scan_classifier.privacy import Redactor, numbered

if TYPE_CHECKING:
    from napari_scan_classifier.io.dicom import HeaderReader

_HASH_BLOCK = 1 << 20


@dataclass(frozen=True)
class SeriesTask:
    """One series to classify: ``index`` counts series over the cohort, ``number`` is the input's
    position on the command line; ``files`` are its DICOM files (None: a NIfTI file)."""

    index: int
    number: int
    key: str
    path: str
    files: tuple[str, ...] | None = None


def expand_inputs(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The inputs, with each ``@list.txt`` replaced by the paths it lists (one per line; blank
    lines and ``#`` comments ignored; relative paths are relative to the list's folder)."""
    inputs: list[Path] = []
    for given in map(str, paths):
        if not given.startswith("@"):
            inputs.append(Path(given))
            continue
        listing = Path(given[1:])
        try:
            lines = listing.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise UnreadableScanError(f"{given}: cannot read the list of inputs") from error
        for line in (line.strip() for line in lines):
            if line and not line.startswith("#"):
                inputs.append(listing.parent / Path(line).expanduser())
    missing = [f"input {n}" for n, p in enumerate(inputs, start=1) if not p.exists()]
    if missing:
        raise UnreadableScanError(f"{', '.join(missing)}: no such file or folder")
    if not inputs:
        raise UnreadableScanError("no inputs given (the list is empty)")
    return inputs


def discover(
    inputs: Sequence[Path], redact: Redactor, reader: HeaderReader | None = None
) -> tuple[list[SeriesTask], list[dict[str, Any]]]:
    """The series under every input, from headers only (NIfTI: its file hash is its key), and
    the files left out (by input number, reasons redacted). A series given twice is kept once.
    ``reader`` reads the DICOM headers elsewhere (a cluster's workers), else this process does."""
    from napari_scan_classifier.io import is_nifti, nifti_files_under

    tasks: list[SeriesTask] = []
    skipped: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, path in enumerate(inputs, start=1):
        special = special_file_reason(path)
        if special is not None:
            skipped.append({"input": number, "reason": special})
            continue
        niftis = [path] if path.is_file() and is_nifti(path) else nifti_files_under(path)
        found: dict[str, tuple[str, tuple[str, ...] | None]] = {}
        if path not in niftis:
            found = _dicom_series(path, number, niftis, redact, reader, skipped)
        for file in niftis:
            redact.found(file, path)
            found[file_key(file)] = (str(file), None)
        for key, (where, files) in found.items():
            if key not in seen:
                seen.add(key)
                tasks.append(SeriesTask(len(tasks) + 1, number, key, where, files))
    return tasks, skipped


def _dicom_series(
    path: Path,
    number: int,
    niftis: list[Path],
    redact: Redactor,
    reader: HeaderReader | None,
    skipped: list[dict[str, Any]],
) -> dict[str, tuple[str, tuple[str, ...] | None]]:
    """The DICOM series under input ``number`` by key (where, files); what it leaves out goes to
    ``skipped``. A folder of NIfTI files needs no DICOM file."""
    from napari_scan_classifier.io.dicom import series_files

    try:
        stacks, left_out = series_files(path, reader=reader)
    except ScanClassifierError as error:
        if not niftis:
            skipped.append({"input": number, "reason": redact(numbered(str(error), number))})
        return {}
    for file in left_out:
        redact.found(file.local_path(), path)
    skipped += [{"input": number, "reason": redact(str(s))} for s in left_out]
    return {key: (str(path), tuple(map(str, files))) for key, files in stacks.items()}


def file_key(path: Path) -> str:
    """A NIfTI file's series key: a hash of its bytes, so the same scan keeps its key wherever it
    is copied (streamed; the file is never held in memory)."""
    digest = hashlib.sha1()
    with path.open("rb") as stream:
        while block := stream.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()[:12]
