"""Finding files, reading their headers concurrently and grouping frames into stacks."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from concurrent.futures import Executor
from pathlib import Path

import numpy as np

from napari_scan_classifier.errors import (
    CancelledError,
    UnreadableScanError,
)
from napari_scan_classifier.io import SkippedFile
from napari_scan_classifier.io.dicom.frames import _read_file
from napari_scan_classifier.io.dicom.records import Cancel, Progress, _Frame, _SkipFileError, _Stack


def _candidate_files(path: Path) -> list[Path]:
    """Every file under ``path`` in a stable order. Hidden files and folders are left out, and
    so is a DICOMDIR index (choosing one means: the media it indexes, i.e. its folder)."""
    if path.is_file() and path.name.upper() != "DICOMDIR":
        return [path]
    found = []
    for root, dirs, names in os.walk(path.parent if path.is_file() else path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(
            Path(root) / n
            for n in sorted(names)
            if not n.startswith(".") and n.upper() != "DICOMDIR"
        )
    return found


def _try_file(
    path: Path, known: dict[tuple, dict], cancel: Cancel | None
) -> list[_Frame] | SkippedFile:
    if cancel is not None and cancel():
        raise CancelledError("loading was cancelled")
    try:
        return _read_file(path, known)
    except _SkipFileError as skip:
        return SkippedFile(path, str(skip))


def _series_key(frame: _Frame) -> str:
    """A de-identified id for a stack (a hash, so no UID leaves this module)."""
    f = frame.file
    parts = [
        f.series_uid,
        str(f.fields.get("series_number")),
        "\\".join(f.image_type),
        "\\".join(frame.kind),
        f"{frame.rows}x{frame.cols}",
        str(f.time_frames),
        str(frame.position is None),
    ]
    parts += [f"{v:.3f}" for v in frame.orientation or ()]
    parts += [f"{v:.4f}" for v in frame.pixel_spacing or ()]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


def _same_stack(a: _Frame, b: _Frame) -> bool:
    def close(x, y, tol):
        return (x is None) == (y is None) and (x is None or np.allclose(x, y, rtol=0, atol=tol))

    return close(a.orientation, b.orientation, 1e-3) and close(
        a.pixel_spacing, b.pixel_spacing, 1e-4
    )


def _group(frames: Iterable[_Frame]) -> list[_Stack]:
    """Split into stacks: series UID, image/frame type and grid, then orientation and spacing."""
    buckets: dict[tuple, list[list[_Frame]]] = {}
    for frame in frames:
        f = frame.file
        base = (
            f.series_uid,
            f.fields.get("series_number"),
            f.image_type,
            frame.kind,
            frame.rows,
            frame.cols,
            f.time_frames,
            frame.position is None,
        )
        clusters = buckets.setdefault(base, [])
        for cluster in clusters:
            if _same_stack(cluster[0], frame):
                cluster.append(frame)
                break
        else:
            clusters.append([frame])
    stacks = [_Stack(_series_key(c[0]), c) for cs in buckets.values() for c in cs]
    return sorted(stacks, key=_stack_sort_key)


def _stack_sort_key(stack: _Stack) -> tuple:
    fields = stack.frames[0].file.fields
    number = fields.get("series_number")
    return (number is None, number or 0, fields.get("series_description", ""), stack.key)


def _scan(
    path: Path, pool: Executor, progress: Progress | None, cancel: Cancel | None
) -> tuple[list[_Stack], list[SkippedFile]]:
    """Read every header under ``path``; the stacks found and the files left out."""
    if not path.exists():
        raise UnreadableScanError(f"{path.name}: no such file or folder")
    candidates = _candidate_files(path)
    frames: list[_Frame] = []
    skipped: list[SkippedFile] = []
    known: dict[tuple, dict] = {}
    seen: dict[str, Path] = {}
    results = pool.map(lambda p: _try_file(p, known, cancel), candidates)
    for done, (candidate, result) in enumerate(zip(candidates, results, strict=True), 1):
        uid = result[0].file.instance_uid if isinstance(result, list) and result else ""
        if isinstance(result, SkippedFile):
            skipped.append(result)
        elif uid and uid in seen:
            reason = f"a copy of {seen[uid].name} (same instance UID)"
            skipped.append(SkippedFile(candidate, reason))
        else:
            seen.setdefault(uid, candidate)
            frames.extend(result)
        if progress is not None:
            progress(done, len(candidates), "Reading DICOM headers")
    if not frames:
        if path.is_file() and len(candidates) == 1 and skipped:
            raise UnreadableScanError(f"{path.name}: {skipped[0].reason}")
        raise UnreadableScanError(
            f"{path.name}: no DICOM images found in this folder ({len(candidates)} files checked)"
        )
    return _group(frames), skipped
