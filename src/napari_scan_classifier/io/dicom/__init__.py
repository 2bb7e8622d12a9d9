"""DICOM series: discovery, geometry and decoding into :class:`Volume`s (pydicom >= 3).

Headers are read once with ``stop_before_pixels``; slices are grouped into stacks (series UID,
then orientation, pixel grid and image type, so a localizer never joins the axial slices), placed
by their position projected on the slice normal, and decoded concurrently straight into one
preallocated array. Uncompressed pixel data is read from the file directly; everything else goes
through pydicom's decoders (pylibjpeg, pyjpegls).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from napari_scan_classifier.errors import (
    GeometryError,
    ResourceLimitError,
    ScanClassifierError,
    UnreadableScanError,
    UnsupportedTransferSyntaxError,
)
from napari_scan_classifier.io import LoadResult, SkippedFile
from napari_scan_classifier.io.dicom.discovery import HeaderReader, _scan, read_headers
from napari_scan_classifier.io.dicom.geometry import _plan, _stack_name
from napari_scan_classifier.io.dicom.pixels import (
    _decode_stack,
    _Decoder,
    _left_out,
    _undecodable,
)
from napari_scan_classifier.io.dicom.records import (
    _DEFAULT_IOP,
    Cancel,
    Progress,
    SeriesInfo,
    _Stack,
)
from napari_scan_classifier.volume import Volume


def _orientation_name(normal: np.ndarray) -> str:
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) < 0.9:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def _info(stack: _Stack) -> SeriesInfo:
    file = stack.frames[0].file
    try:
        plan = _plan(stack)
        shape, layers, problem = plan.shape[-3:], len(plan.layers), ""
    except GeometryError as error:
        shape, layers, problem = (len(stack.frames), file.rows, file.cols), 1, str(error)
    fields = file.fields
    return SeriesInfo(
        key=stack.key,
        series_number=fields.get("series_number"),
        description=fields.get("series_description", ""),
        modality=fields.get("modality", "OT"),
        shape=shape,
        n_frames=len(stack.frames),
        timepoints=layers,
        image_type=file.image_type,
        orientation=_orientation_name(
            np.cross(*np.reshape(stack.frames[0].orientation or _DEFAULT_IOP, (2, 3)))
        ),
        transfer_syntax=str(file.syntax.name),
        problem=problem,
    )


def _workers(max_workers: int | None) -> int:
    return max_workers or min(16, 4 * (os.cpu_count() or 1))


def list_series(
    path: str | Path,
    *,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    max_workers: int | None = None,
) -> list[SeriesInfo]:
    """The series (stacks) under ``path`` from their headers only; no pixel data is read."""
    with ThreadPoolExecutor(_workers(max_workers)) as pool:
        stacks, _ = _scan(Path(path), pool, progress, cancel)
    return [_info(stack) for stack in stacks]


def series_files(
    path: str | Path,
    *,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    max_workers: int | None = None,
    reader: HeaderReader | None = None,
) -> tuple[dict[str, list[Path]], list[SkippedFile]]:
    """Each series key under ``path`` with the files that hold it, and the files left out, from
    the headers only: so one series can be loaded on its own elsewhere (another process or
    machine) with ``load_dicom(path, series=[key], files=...)`` without searching ``path``.
    ``reader`` reads the headers elsewhere (e.g. on a cluster), else threads here do."""
    with ThreadPoolExecutor(_workers(max_workers)) as pool:
        stacks, skipped = _scan(Path(path), pool, progress, cancel, reader=reader)
    return {stack.key: [file.path for file in stack.files] for stack in stacks}, skipped


def load_dicom(
    path: str | Path,
    *,
    series: Iterable[str] | None = None,
    files: Iterable[str | Path] | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    max_workers: int | None = None,
) -> LoadResult:
    """Load every DICOM series under ``path`` (a file or a folder, searched recursively).

    One Volume per series, split where orientation, pixel grid or image type changes.
    ``series`` restricts loading to keys from :func:`list_series`, ``files`` reads only these
    files instead of searching ``path`` (see :func:`series_files`). Files that cannot be used
    are reported in ``LoadResult.skipped``; if nothing loads, the first problem is raised.
    """
    path = Path(path)
    wanted = set(series) if series is not None else None
    volumes: list[Volume] = []
    errors: list[ScanClassifierError] = []
    workers = _workers(max_workers)
    with ThreadPoolExecutor(workers) as pool:
        stacks, skipped = _scan(path, pool, progress, cancel, files)
        decoder = _Decoder(pool, chunk=2 * workers, cancel=cancel, progress=progress)
        for stack in stacks:
            if wanted is not None and stack.key not in wanted:
                continue
            problem = _undecodable(stack.files)
            if problem is not None:
                _, reason = problem
                skipped.extend(_left_out(f, reason, stack) for f in stack.files)
                errors.append(UnsupportedTransferSyntaxError(f"{_stack_name(stack)}: {reason}"))
                continue
            try:
                volumes.append(_decode_stack(stack, decoder, skipped))
            except (UnreadableScanError, ResourceLimitError) as exc:
                errors.append(exc)
    if not volumes and errors:
        raise errors[0]
    return LoadResult(volumes, skipped)


__all__ = [
    "Cancel",
    "HeaderReader",
    "Progress",
    "SeriesInfo",
    "list_series",
    "load_dicom",
    "read_headers",
    "series_files",
]
