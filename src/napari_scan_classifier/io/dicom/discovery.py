"""Finding files, reading their headers concurrently and grouping frames into stacks."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor
from pathlib import Path

from napari_scan_classifier.errors import (
    CancelledError,
    UnreadableScanError,
)
from napari_scan_classifier.io import SkippedFile, files_under, is_nifti
from napari_scan_classifier.io.dicom.frames import _read_file
from napari_scan_classifier.io.dicom.records import Cancel, Progress, _Frame, _SkipFileError, _Stack
from napari_scan_classifier.limits import special_file_reason
from napari_scan_classifier.privacy import THE_INPUT


def _candidate_files(path: Path) -> list[Path]:
    """Every file under ``path`` in a stable order but NIfTI files (``load_scans`` reads them
    as such) and a DICOMDIR index (choosing one means: the media it indexes, i.e. its folder)."""
    if path.is_file() and path.name.upper() != "DICOMDIR":
        return [path]
    return [
        file
        for file in files_under(path.parent if path.is_file() else path)
        if file.name.upper() != "DICOMDIR" and not is_nifti(file)
    ]


def _try_file(
    position: int, path: Path, known: dict[tuple, dict], cancel: Cancel | None
) -> list[_Frame] | SkippedFile:
    if cancel is not None and cancel():
        raise CancelledError("loading was cancelled")
    special = special_file_reason(path)  # opening a named pipe would block forever
    if special is not None:
        return SkippedFile(position, special, _path=path)
    try:
        frames = _read_file(path, known)
    except _SkipFileError as skip:
        return SkippedFile(position, str(skip), _path=path)
    for frame in frames:
        frame.file.position = position
    return frames


def read_headers(items: Sequence[tuple[int, Path]]) -> list[list[_Frame] | SkippedFile]:
    """The headers of a batch of (position, path) files where this runs: another process or
    machine, when a cluster reads a cohort's headers (see :data:`HeaderReader`)."""
    known: dict[tuple, dict] = {}
    return [_try_file(position, Path(path), known, None) for position, path in items]


# Reads the headers of (position, path) files elsewhere, e.g. batches of read_headers on a
# cluster's workers; yields one result per file, in order.
HeaderReader = Callable[[list[tuple[int, Path]]], Iterable[list[_Frame] | SkippedFile]]


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
        *f.variant,
    ]
    parts += [f"{v:.3f}" for v in frame.orientation or ()]
    parts += [f"{v:.4f}" for v in frame.pixel_spacing or ()]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


def _same_stack(a: _Frame, b: _Frame) -> bool:
    """Same orientation and pixel spacing within header rounding (plain floats: this runs for
    every frame, where numpy's call overhead would dominate)."""

    def close(x, y, tol):
        if x is y:  # frames of one file share these
            return True
        if x is None or y is None:
            return x is y
        return all(abs(p - q) <= tol for p, q in zip(x, y, strict=True))

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
            f.flip_rows,
            f.variant,
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
    variant = stack.frames[0].file.variant
    return (number is None, number or 0, fields.get("series_description", ""), variant, stack.key)


def _digest(path: Path) -> str:
    with open(path, "rb") as fp:
        return hashlib.file_digest(fp, "sha1").hexdigest()


def _without_copies(read: list[list[_Frame]], skipped: list[SkippedFile]) -> list[list[_Frame]]:
    """Files sharing a series and an instance UID: byte-identical copies are left out (reported);
    copies whose content differs (another encoding, other pixels) each become a stack of their
    own, ranked by transfer syntax and content, never by file name."""
    by_uid: dict[tuple[str, str], list[list[_Frame]]] = {}
    for frames in read:
        file = frames[0].file
        by_uid.setdefault((file.series_uid, file.instance_uid or str(id(file))), []).append(frames)
    kept = []
    for group in by_uid.values():
        if len(group) == 1:
            kept.append(group[0])
            continue
        distinct: dict[str, list[_Frame]] = {}
        for frames in sorted(group, key=lambda fs: str(fs[0].file.path)):
            digest = _digest(frames[0].file.path)
            if digest in distinct:
                reason = (
                    f"an identical copy of instance {frames[0].file.instance} "
                    "(same instance UID and content)"
                )
                file = frames[0].file
                skipped.append(
                    SkippedFile(file.position, reason, instance=file.instance, _path=file.path)
                )
            else:
                distinct[digest] = frames
        ranked = sorted(distinct.items(), key=lambda item: (str(item[1][0].file.syntax), item[0]))
        for rank, (_, frames) in enumerate(ranked):
            if rank:
                frames[0].file.variant += (f"copy {rank}",)
            kept.append(frames)
    return kept


def _scan(
    path: Path,
    pool: Executor,
    progress: Progress | None,
    cancel: Cancel | None,
    files: Iterable[str | Path] | None = None,
    reader: HeaderReader | None = None,
) -> tuple[list[_Stack], list[SkippedFile]]:
    """Read every header under ``path`` (only ``files`` where given; with ``reader``, there
    rather than in ``pool``); the stacks found and the files left out."""
    if not path.exists():
        raise UnreadableScanError(f"{THE_INPUT}: no such file or folder")
    candidates = _candidate_files(path) if files is None else [Path(f) for f in files]
    skipped: list[SkippedFile] = []
    known: dict[tuple, dict] = {}
    read: list[list[_Frame]] = []
    items = list(enumerate(candidates, 1))
    results = (
        pool.map(lambda item: _try_file(*item, known, cancel), items)
        if reader is None
        else reader(items)
    )
    for done, result in enumerate(results, 1):
        if isinstance(result, SkippedFile):
            skipped.append(result)
        elif result:
            read.append(result)
        if progress is not None:
            progress(done, len(candidates), "Reading DICOM headers")
    frames = [frame for kept in _without_copies(read, skipped) for frame in kept]
    if not frames:
        if path.is_file() and len(candidates) == 1 and skipped:
            raise UnreadableScanError(f"{THE_INPUT}: {skipped[0].reason}")
        reasons = Counter(s.reason for s in skipped).most_common(1)
        common = f"; {reasons[0][1]} skipped: {reasons[0][0]}" if reasons else ""
        raise UnreadableScanError(
            f"{THE_INPUT}: no DICOM images found in this folder "
            f"({len(candidates)} file{'s' * (len(candidates) != 1)} checked{common})"
        )
    return _group(frames), skipped
