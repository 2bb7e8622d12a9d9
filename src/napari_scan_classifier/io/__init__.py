"""Reading and writing scans. Every reader returns :class:`~napari_scan_classifier.volume.Volume`s
in the package's world convention; nothing here imports napari or Qt."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from napari_scan_classifier.errors import ScanClassifierError, UnreadableScanError
from napari_scan_classifier.privacy import THE_INPUT
from napari_scan_classifier.volume import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
NIFTI_PART = "the NIfTI files"  # how a skipped NIfTI file in a folder is placed: "file 2 of ..."


@dataclass(frozen=True)
class SkippedFile:
    """A file left out of a load, and why, named by its place and never by its name (folders are
    often named after patients): ``position`` in the sorted list of files found under the input
    (1 is the first), within ``within`` where the input has parts (a retrieved DICOMweb series),
    plus the series and instance number where known. The path stays with the program
    (:meth:`local_path`) and is never printed, repr'd or exported."""

    position: int
    reason: str
    series: str = ""
    instance: int | None = None
    within: str = ""
    _path: Path | None = field(default=None, repr=False, compare=False)

    @property
    def label(self) -> str:
        """``file 3``, ``file 3 of retrieved series 1``, ``file 3 (series 4 (key), instance 7)``."""
        where = f"file {self.position}" + (f" of {self.within}" if self.within else "")
        known = [self.series] if self.series else []
        known += [f"instance {self.instance}"] if self.instance else []
        return f"{where} ({', '.join(known)})" if known else where

    def local_path(self) -> Path | None:
        """Where the file is, for the program's own use (opening it, telling a file's kind)."""
        return self._path

    def __str__(self) -> str:
        return f"{self.label}: {self.reason}"


@dataclass
class LoadResult:
    """The volumes found under a path, plus the files that could not be used."""

    volumes: list[Volume]
    skipped: list[SkippedFile] = field(default_factory=list)


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def files_under(folder: Path) -> list[Path]:
    """Every file under ``folder`` in a stable order, hidden files and folders left out."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root) / n for n in sorted(names) if not n.startswith("."))
    return found


def nifti_files_under(path: Path) -> list[Path]:
    """The NIfTI files under a folder (none under a file), in a stable order."""
    return [file for file in files_under(path) if is_nifti(file)] if path.is_dir() else []


def load_scans(
    path: str | Path,
    *,
    progress: Callable[[int, int, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> LoadResult:
    """Load every scan under ``path``: a NIfTI file, a DICOM file, a folder of DICOM series
    and NIfTI files, or a DICOMweb study or series address
    (``http(s)://.../studies/UID[/series/UID]``). ``progress`` and ``cancel`` reach the DICOM
    loader (reports; a stop between files)."""
    if isinstance(path, str) and path.lower().startswith(("http://", "https://")):
        from napari_scan_classifier.io.dicomweb import load_url

        return load_url(path)
    path = Path(path)
    if not path.exists():
        raise UnreadableScanError(f"{THE_INPUT}: no such file or folder")
    if path.is_file() and is_nifti(path):
        from napari_scan_classifier.io.nifti import load_nifti

        return LoadResult([load_nifti(path)])
    from napari_scan_classifier.io.dicom import load_dicom

    niftis = nifti_files_under(path)
    try:
        result = load_dicom(path, progress=progress, cancel=cancel)
    except UnreadableScanError:
        if not niftis:
            raise
        result = LoadResult([])  # a folder of NIfTI files
    for position, file in enumerate(niftis, start=1):
        _add_nifti(result, file, position)
    return result


def _add_nifti(result: LoadResult, file: Path, position: int) -> None:
    """``file``'s volume added to ``result``, or its reason to its skipped files."""
    from napari_scan_classifier.io.nifti import load_nifti

    try:
        result.volumes.append(load_nifti(file))
    except ScanClassifierError as error:
        reason = str(error).removeprefix(f"{THE_INPUT}: ")
        result.skipped.append(SkippedFile(position, reason, within=NIFTI_PART, _path=file))


__all__ = [
    "LoadResult",
    "SkippedFile",
    "files_under",
    "is_nifti",
    "load_scans",
    "nifti_files_under",
]
