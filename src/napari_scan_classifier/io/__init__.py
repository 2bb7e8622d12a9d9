"""Reading and writing scans. Every reader returns :class:`~napari_scan_classifier.volume.Volume`s
in the package's world convention; nothing here imports napari or Qt."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from napari_scan_classifier.errors import UnreadableScanError
from napari_scan_classifier.privacy import THE_INPUT
from napari_scan_classifier.volume import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


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


def load_scans(
    path: str | Path,
    *,
    progress: Callable[[int, int, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> LoadResult:
    """Load every scan under ``path``: a NIfTI file, a DICOM file, a folder of DICOM series, or
    a DICOMweb study or series address (``http(s)://.../studies/UID[/series/UID]``).
    ``progress`` and ``cancel`` reach the DICOM loader (reports; a stop between files)."""
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

    return load_dicom(path, progress=progress, cancel=cancel)


__all__ = ["LoadResult", "SkippedFile", "is_nifti", "load_scans"]
