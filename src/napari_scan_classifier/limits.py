"""Resource guards for untrusted files: a memory budget, bounded zip extraction, bounded JSON.

A small file can declare a huge content (a zip member expanding 1000-fold, a model grid of
4096^3 voxels). Everything that reads such a file asks here *before* allocating or writing, and is
refused with an error that gives the size, instead of exhausting memory or disk.

The memory budget defaults to half the memory available when the check runs; set it with
:func:`set_memory_budget` or the ``NAPARI_SCAN_CLASSIFIER_MEMORY_BUDGET`` environment variable
(bytes, or a number with K, M, G or T, e.g. ``8G``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import psutil

from napari_scan_classifier.errors import ResourceLimitError, ScanClassifierError
from napari_scan_classifier.privacy import strip_paths

BUDGET_ENV = "NAPARI_SCAN_CLASSIFIER_MEMORY_BUDGET"
BUDGET_FRACTION = 0.5  # of the available memory: room for the viewer and the copies we make
# Real members compress at most ~20:1 (JSON, masks); a bomb of zeros reaches ~1000:1. Small
# members are exempt: they cannot expand into anything harmful.
MAX_ZIP_RATIO = 100
RATIO_EXEMPT_BYTES = 1 << 20
MAX_ZIP_MEMBERS = 10_000
SUPPORTED_COMPRESSION = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
CHUNK_BYTES = 1 << 20
# Errors the zipfile module and its decompressors raise on damaged or hostile archives.
ZIP_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    NotImplementedError,
    RuntimeError,
    OverflowError,
)

_budget_override: int | None = None
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def set_memory_budget(nbytes: int | None) -> None:
    """Cap what one file may make us allocate (None: back to the default)."""
    global _budget_override
    if nbytes is not None and nbytes <= 0:
        raise ValueError("the memory budget must be a positive number of bytes")
    _budget_override = nbytes


def memory_budget() -> int:
    """Bytes one file may make us allocate: the setting, else half the available memory."""
    if _budget_override is not None:
        return _budget_override
    configured = os.environ.get(BUDGET_ENV)
    if configured:
        match = _SIZE.fullmatch(configured)
        if match is None:
            raise ScanClassifierError(
                f"{BUDGET_ENV}={configured!r} is not a size (examples: 4000000000, 8G, 512M)"
            )
        return max(1, int(float(match[1]) * _UNITS[match[2].upper()]))
    return int(psutil.virtual_memory().available * BUDGET_FRACTION)


def format_bytes(nbytes: float) -> str:
    """``"256 GiB"``: sizes in messages."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(nbytes) < 1024 or unit == "PiB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")


def check_memory(
    nbytes: int, what: str, error: type[ScanClassifierError] = ResourceLimitError
) -> None:
    """Refuse ``what`` before allocating it if it needs more than the memory budget."""
    budget = memory_budget()
    if nbytes > budget:
        raise error(
            f"{what} would need {format_bytes(nbytes)} of memory, more than the budget of "
            f"{format_bytes(budget)} (set {BUDGET_ENV} to change it)"
        )


def parse_json(
    raw: bytes, what: str, error: type[ScanClassifierError], max_bytes: int | None = None
) -> Any:
    """Parse untrusted JSON; damage, deep nesting or excess size is ``error`` naming ``what``."""
    if max_bytes is not None and len(raw) > max_bytes:
        raise error(f"{what} is implausibly large (more than {format_bytes(max_bytes)})")
    try:
        return json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise error(f"{what} is nested too deeply to be read") from None
    except (UnicodeDecodeError, ValueError) as problem:
        raise error(f"{what} is not valid JSON ({_first_line(problem)})") from None


# ----------------------------------------------------------------------------------- zips


def open_zip(source: Path | IO[bytes], what: str, error: type[ScanClassifierError]) -> Any:
    """A ``ZipFile`` whose members are checked for encryption, compression and count."""
    try:
        archive = zipfile.ZipFile(source)
        infos = archive.infolist()
    except ZIP_ERRORS as problem:
        raise error(f"{what} is not a readable zip file ({_first_line(problem)})") from None
    if len(infos) > MAX_ZIP_MEMBERS:
        archive.close()
        raise error(f"{what} holds {len(infos)} files, more than {MAX_ZIP_MEMBERS}")
    return archive


def check_member(
    info: zipfile.ZipInfo,
    what: str,
    error: type[ScanClassifierError],
    limit: int,
    max_ratio: float | None = MAX_ZIP_RATIO,
) -> None:
    """Refuse a member that is encrypted, oddly compressed, too large or expands suspiciously
    (more than ``max_ratio``-fold; None: a caller that bounds the expanded size otherwise)."""
    if info.flag_bits & 0x1:
        raise error(f"{what} is encrypted")
    if info.compress_type not in SUPPORTED_COMPRESSION:
        raise error(f"{what} uses an unsupported compression method ({info.compress_type})")
    if info.file_size > limit:
        raise error(
            f"{what} expands to {format_bytes(info.file_size)}, more than the limit of "
            f"{format_bytes(limit)} (set {BUDGET_ENV} to change it)"
        )
    ratio = info.file_size / max(info.compress_size, 1)
    if max_ratio is not None and info.file_size > RATIO_EXEMPT_BYTES and ratio > max_ratio:
        raise error(
            f"{what} expands {ratio:.0f}-fold ({format_bytes(info.compress_size)} to "
            f"{format_bytes(info.file_size)}), more than the {max_ratio:g}-fold a real file "
            "reaches: refused as a zip bomb"
        )


def read_member(
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    what: str,
    error: type[ScanClassifierError],
    limit: int | None = None,
) -> bytes:
    """A member's bytes, checked first and read with a running total (never past ``limit``)."""
    limit = memory_budget() if limit is None else limit
    check_member(info, what, error, limit)
    return b"".join(_chunks(archive, info, what, error, limit))


def extract_member(
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    target: Path,
    what: str,
    error: type[ScanClassifierError],
    limit: int,
) -> int:
    """Stream a checked member to ``target`` (created, never replaced); returns its size."""
    check_member(info, what, error, limit)
    written = 0
    with open(target, "xb") as out:
        for chunk in _chunks(archive, info, what, error, limit):
            out.write(chunk)
            written += len(chunk)
    return written


def free_disk(folder: Path) -> int:
    """Bytes free on the file system of ``folder``."""
    return shutil.disk_usage(folder).free


def _chunks(
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    what: str,
    error: type[ScanClassifierError],
    limit: int,
) -> Iterator[bytes]:
    total = 0
    try:
        with archive.open(info) as member:
            while chunk := member.read(CHUNK_BYTES):
                total += len(chunk)
                if total > min(limit, info.file_size):
                    raise error(f"{what} holds more data than it declares")
                yield chunk
    except ZIP_ERRORS as problem:
        raise error(f"{what} is damaged ({_first_line(problem)})") from None


# ------------------------------------------------------------------------------ special files


def special_file_reason(path: Path) -> str | None:
    """Why ``path`` must not be opened as a file (a pipe would block forever), or None."""
    try:
        mode = path.stat().st_mode  # follows links: a link to a pipe blocks as well
    except OSError:
        return None
    kinds = {
        stat.S_ISFIFO: "a named pipe",
        stat.S_ISSOCK: "a socket",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
    }
    for test, kind in kinds.items():
        if test(mode):
            return f"it is {kind}, not a file"
    return None


def _first_line(problem: BaseException) -> str:
    """A third-party error's first line, without any path it quotes."""
    text = problem.strerror if isinstance(problem, OSError) and problem.strerror else str(problem)
    text = strip_paths(text.strip())
    return text.splitlines()[0][:200] if text else type(problem).__name__
