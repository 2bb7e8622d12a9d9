"""The records the DICOM reader passes between its stages: files, frames, stacks, plans."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from pydicom.uid import UID, ExplicitVRBigEndian

from napari_scan_classifier.limits import BUDGET_ENV, format_bytes, memory_budget

Progress = Callable[[int, int, str], None]
Cancel = Callable[[], bool]
_DEFAULT_IOP = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@dataclass(frozen=True)
class SeriesInfo:
    """One series (or one stack of a split series) as found in the headers, without patient data.

    ``key`` is a de-identified, stable id to pass to ``load_dicom(path, series=[key])``.
    """

    key: str
    series_number: int | None
    description: str
    modality: str
    shape: tuple[int, int, int]
    n_frames: int
    timepoints: int
    image_type: tuple[str, ...]
    orientation: str
    transfer_syntax: str
    problem: str = ""  # why it cannot be loaded, found from the headers alone


class _SkipFileError(Exception):
    """A file that cannot be used; the message is the reason shown to the user."""


class _OverflowError(Exception):
    """Rescaled values do not fit the chosen integer type; decode again with a wider one."""


class _Gunzipped:
    """The decompressed bytes of a ``.dcm.gz``, refused past the memory budget: a few kilobytes
    of gzip can expand to gigabytes (a bomb), which pydicom would hold in memory. Seeking on is
    allowed (it decompresses without keeping anything); reading past the budget is not.
    ``owner``: closing it closes ``packed`` as well."""

    def __init__(self, packed: BinaryIO, *, owner: bool = False) -> None:
        self._packed = packed if owner else None
        self._fp = gzip.GzipFile(fileobj=packed, mode="rb")
        self._limit = memory_budget()
        self.name = getattr(packed, "name", "")

    def read(self, size: int | None = -1) -> bytes:
        room = max(0, self._limit + 1 - self._fp.tell())
        data = self._fp.read(room if size is None or size < 0 else min(size, room))
        self._check()
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        room = max(0, self._limit + 1 - self._fp.tell())
        count = self._fp.readinto(view[:room])
        self._check()
        return count

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fp.seek(offset, whence)

    def tell(self) -> int:
        return self._fp.tell()

    def close(self) -> None:
        self._fp.close()
        if self._packed is not None:
            self._packed.close()

    def __enter__(self) -> _Gunzipped:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _check(self) -> None:
        if self._fp.tell() > self._limit:
            raise _SkipFileError(
                f"gzipped, it expands to more than the memory budget of "
                f"{format_bytes(self._limit)} (set {BUDGET_ENV} to change it)"
            )


@dataclass(eq=False)
class _File:
    """What the loader needs from one file's header (no patient fields)."""

    path: Path
    syntax: UID
    series_uid: str
    instance_uid: str
    instance: int
    fields: dict[str, Any]
    image_type: tuple[str, ...]
    rows: int
    cols: int
    samples: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    n_frames: int
    pixel_offset: int | None = None
    mosaic: tuple[int, int, int] | None = None  # tile rows, tile columns, tiles per mosaic row
    time_frames: bool = False
    flip_rows: bool = False  # reverse phase-encoding volume, shown the right way up
    variant: tuple[str, ...] = ()  # what else splits its series: an echo, a differing copy
    gzipped: bool = False  # a .dcm.gz: read through gzip
    scale: float = 1.0  # multiplies every rescale slope (an RT dose's DoseGridScaling)
    # the file's acquisition order: temporal position, echo, acquisition number and time
    order: tuple[int, int, int, float] = (0, 0, 0, 0.0)
    swap_pairs: bool = False  # 8-bit pixels stored as big-endian 16-bit words (OW)
    table: tuple[int, np.ndarray] | None = None  # (first stored value, values): a LUT to apply
    position: int = 0  # its place among the files found under the input (how messages name it)

    def open(self) -> Any:
        """The file's bytes (decompressed for a .dcm.gz, within the memory budget)."""
        raw = open(self.path, "rb")  # noqa: SIM115 - closed with the stream returned
        return _Gunzipped(raw, owner=True) if self.gzipped else raw

    @property
    def stored_dtype(self) -> np.dtype:
        size = max(1, self.bits_allocated // 8)
        return np.dtype(
            f"{'>' if self.syntax == ExplicitVRBigEndian else '<'}"
            f"{'i' if self.signed else 'u'}{size}"
        )

    @property
    def frame_bytes(self) -> int:
        return self.rows * self.cols * self.samples * self.bits_allocated // 8


@dataclass(eq=False)
class _Frame:
    """One 2D image: a single-frame file, a frame of a multi-frame file, or a mosaic tile."""

    file: _File
    index: int
    rows: int
    cols: int
    position: np.ndarray | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    thickness: float | None
    slope: float = 1.0
    intercept: float = 0.0
    kind: tuple[str, ...] = ()
    order: tuple = ()


@dataclass
class _Stack:
    key: str
    frames: list[_Frame]

    @property
    def files(self) -> list[_File]:
        return list(dict.fromkeys(frame.file for frame in self.frames))


@dataclass
class _Plan:
    """Where each decoded frame goes: ``layers[t][u]`` is the u-th position of time point t,
    ``weights[z]`` the (u, weight) pairs that make output slice z."""

    layers: list[list[_Frame]]
    weights: list[list[tuple[int, float]]]
    mode: str  # "exact", "fill" (missing slices interpolated) or "resample" (uneven gaps)
    affine_lps: np.ndarray
    warnings: list[str] = field(default_factory=list)
    frame_axis: str | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        first = self.layers[0][0]
        spatial = (len(self.weights), first.rows, first.cols)
        return (len(self.layers), *spatial) if len(self.layers) > 1 else spatial


def _value_range(frame: _Frame) -> tuple[float, float]:
    """The rescaled values a frame's stored bits can hold."""
    f = frame.file
    bits = min(f.bits_stored, f.bits_allocated)
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if f.signed else (0, 2**bits - 1)
    ends = (low * frame.slope + frame.intercept, high * frame.slope + frame.intercept)
    return min(ends), max(ends)
