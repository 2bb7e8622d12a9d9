"""Decoding a planned stack straight into one preallocated array."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.pixels import iter_pixels
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLELossless,
)

from napari_scan_classifier.errors import (
    CancelledError,
    UnreadableScanError,
)
from napari_scan_classifier.io import SkippedFile
from napari_scan_classifier.io.dicom.geometry import _plan, _stack_name
from napari_scan_classifier.io.dicom.mosaic import _tile
from napari_scan_classifier.io.dicom.records import (
    Cancel,
    Progress,
    _File,
    _Frame,
    _OverflowError,
    _Plan,
    _SkipFileError,
    _Stack,
    _value_range,
)
from napari_scan_classifier.limits import check_memory
from napari_scan_classifier.privacy import strip_paths
from napari_scan_classifier.volume import Volume, lps_to_world


def _decoder_packages(syntax: UID) -> str:
    """What to ``pip install`` for a compressed transfer syntax."""
    if syntax in JPEGLSTransferSyntaxes:
        return "pyjpegls"
    if syntax in JPEGTransferSyntaxes:
        return "pylibjpeg pylibjpeg-libjpeg"
    if syntax == RLELossless:
        return "pylibjpeg pylibjpeg-rle"
    return "pylibjpeg pylibjpeg-openjpeg"


def _output_dtype(frames: list[_Frame], widen: bool) -> tuple[np.dtype, bool]:
    """The voxel type and whether each slice must be checked for overflow.

    Stored values stay as they are when no rescale applies; integer rescales of 8/16-bit data
    give int16 (checked per slice when the header allows larger values, int32 after an
    overflow); anything else is float32.
    """
    tables = [f.file.table for f in frames if f.file.table is not None]
    if tables:
        same = len(tables) == len(frames)
        return (np.result_type(*{t[1].dtype for t in tables}) if same else np.float32), False
    if all(f.slope == 1 and f.intercept == 0 for f in frames):
        return np.result_type(*{f.file.stored_dtype.newbyteorder("=") for f in frames}), False
    integral = all(float(f.slope).is_integer() and float(f.intercept).is_integer() for f in frames)
    if not integral or max(f.file.bits_allocated for f in frames) > 16:
        return np.dtype(np.float32), False
    if widen:
        return np.dtype(np.int32), False
    ranges = np.array([_value_range(f) for f in frames])
    info = np.iinfo(np.int16)
    return np.dtype(np.int16), bool(ranges[:, 0].min() < info.min or ranges[:, 1].max() > info.max)


def _rescale_into(
    src: np.ndarray, dest: np.ndarray, slope: float, intercept: float, checked: bool
) -> None:
    """``dest[...] = src * slope + intercept`` in dest's type (src may share dest's memory)."""
    if dest.dtype.kind == "f":
        if slope != 1:
            np.multiply(src, slope, out=dest, casting="unsafe")
        elif not np.shares_memory(src, dest) or src.dtype != dest.dtype:
            np.copyto(dest, src, casting="unsafe")
        if intercept:
            dest += np.asarray(intercept, dest.dtype)
        return
    slope_i, intercept_i = int(slope), int(intercept)
    if checked and src.size:
        ends = (int(src.min()) * slope_i + intercept_i, int(src.max()) * slope_i + intercept_i)
        info = np.iinfo(dest.dtype)
        if min(ends) < info.min or max(ends) > info.max:
            raise _OverflowError
    if slope_i != 1:  # rare: widen so the product cannot wrap before the intercept
        src = src.astype(np.int64) * slope_i
    if intercept_i:  # a scalar of dest's type keeps the loop narrow (the range was checked)
        np.add(src, dest.dtype.type(intercept_i), out=dest, casting="unsafe")
    elif not np.shares_memory(src, dest) or src.dtype != dest.dtype:
        np.copyto(dest, src, casting="unsafe")


def _fix_stored(raw: np.ndarray, file: _File) -> np.ndarray:
    """Native-endian values with unused high bits cleared (or sign-extended), as pydicom does."""
    if file.swap_pairs:  # 8-bit values in big-endian words: each pair of bytes is reversed
        raw.reshape(-1).view(np.uint16).byteswap(inplace=True)
    if raw.dtype.byteorder == ">":
        raw = raw.byteswap(inplace=True).view(raw.dtype.newbyteorder("="))
    shift = file.bits_allocated - file.bits_stored
    if 0 < shift < file.bits_allocated:
        np.left_shift(raw, shift, out=raw)
        np.right_shift(raw, shift, out=raw)
    return raw


_Item = tuple[int, np.ndarray, float, float]  # frame/tile index, destination, slope, intercept


def _read_native(file: _File, items: list[_Item], checked: bool) -> None:
    """Read uncompressed frames from the file straight into their destination slices."""
    stored = file.stored_dtype
    with file.open() as fp:
        for index, dest, slope, intercept in items:
            direct = dest.dtype.itemsize == stored.itemsize and dest.flags.c_contiguous
            raw = dest.view(stored) if direct else np.empty(dest.shape, stored)
            fp.seek(file.pixel_offset + index * file.frame_bytes)
            if fp.readinto(memoryview(raw).cast("B")) != file.frame_bytes:
                raise EOFError("the file ends inside its pixel data")
            _rescale_into(_fix_stored(raw, file), dest, slope, intercept, checked)


def _read_images(file: _File, indices: list[int]) -> Iterator[np.ndarray]:
    """Whole frames, decoded by pydicom (or read directly when uncompressed)."""
    if file.pixel_offset is not None:
        for index in indices:
            image = np.empty((file.rows, file.cols), file.stored_dtype.newbyteorder("="))
            _read_native(file, [(index, image, 1.0, 0.0)], False)
            yield image
        return
    source: Any = file.path
    if file.gzipped or file.syntax == DeflatedExplicitVRLittleEndian:
        with file.open() as fp:  # pydicom reads these only through a full dcmread
            source = dcmread(fp)
    yield from iter_pixels(source, indices=indices if file.n_frames > 1 else None)


def _decode_file(file: _File, items: list[_Item], checked: bool) -> None:
    if file.table is None:
        _decode_values(file, items, checked)
        return
    low, table = file.table  # the table replaces the rescale
    stored = file.stored_dtype.newbyteorder("=")
    temps = [(index, np.empty(dest.shape, stored), 1.0, 0.0) for index, dest, _, _ in items]
    _decode_values(file, temps, False)
    for (_, temp, _, _), (_, dest, _, _) in zip(temps, items, strict=True):
        dest[...] = table[np.clip(temp.astype(np.int64) - low, 0, len(table) - 1)]


def _decode_values(file: _File, items: list[_Item], checked: bool) -> None:
    if file.pixel_offset is not None and file.mosaic is None:
        _read_native(file, items, checked)
        return
    wanted = sorted({0 if file.mosaic else index for index, *_ in items})
    for frame_index, image in zip(wanted, _read_images(file, wanted), strict=True):
        for index, dest, slope, intercept in items:
            if file.mosaic:
                _rescale_into(_tile(image, file, index), dest, slope, intercept, checked)
            elif index == frame_index:
                _rescale_into(image, dest, slope, intercept, checked)


def _decode_job(
    file: _File, items: list[_Item], checked: bool, cancel: Cancel | None
) -> str | None:
    """Decode one file's frames; the reason it failed, or None."""
    if cancel is not None and cancel():
        raise CancelledError("loading was cancelled")
    try:
        _decode_file(file, items, checked)
        if file.flip_rows:  # a reverse phase-encoding volume, turned the right way up
            for _, dest, _, _ in items:
                dest[...] = dest[::-1].copy()
    except (_OverflowError, CancelledError):
        raise
    except _SkipFileError as exc:  # a gzip bomb, found while decompressing
        return str(exc)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or type(exc).__name__})"
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # decoders in Rust raise PanicException, a BaseException
        detail = strip_paths(str(exc), file.path).splitlines()
        return (
            f"pixel data could not be decoded ({detail[0][:160] if detail else type(exc).__name__})"
        )
    return None


@dataclass
class _Decoder:
    """Runs the decoding of one stack on a shared thread pool."""

    pool: Executor
    chunk: int
    cancel: Cancel | None = None
    progress: Progress | None = None
    failures: dict[_File, str] = field(default_factory=dict)

    def run(self, jobs: dict[_File, list[_Item]], checked: bool) -> None:
        files = list(jobs)
        results = self.pool.map(lambda f: _decode_job(f, jobs[f], checked, self.cancel), files)
        for done, (file, failure) in enumerate(zip(files, results, strict=True), 1):
            if failure:
                self.failures[file] = failure
            if self.progress is not None:
                self.progress(done, len(files), "Reading DICOM slices")

    def direct(self, plan: _Plan, out: np.ndarray, checked: bool) -> None:
        """Decode every input slice into its output slice, then fill missing ones."""
        slot = {ws[0][0]: z for z, ws in enumerate(plan.weights) if len(ws) == 1}
        jobs: dict[_File, list[_Item]] = {}
        for t, layer in enumerate(plan.layers):
            for u, frame in enumerate(layer):
                item = (frame.index, out[t, slot[u]], frame.slope, frame.intercept)
                jobs.setdefault(frame.file, []).append(item)
        self.run(jobs, checked)
        for z, ws in enumerate(plan.weights):
            if len(ws) == 2:
                (a, wa), (b, wb) = ws
                mixed = wa * out[:, slot[a]].astype(np.float32) + wb * out[:, slot[b]]
                out[:, z] = np.rint(mixed) if out.dtype.kind in "iu" else mixed

    def resample(self, plan: _Plan, out: np.ndarray) -> None:
        """Interpolate an unevenly spaced stack onto the regular grid, decoding input slices in
        chunks and keeping only those still needed (never a second full copy)."""
        for t, layer in enumerate(plan.layers):
            cache: dict[int, np.ndarray] = {}
            z = 0
            for start in range(0, len(layer), self.chunk):
                chunk = range(start, min(len(layer), start + self.chunk))
                buffers = {u: np.empty(out.shape[2:], np.float32) for u in chunk}
                self.run(self._jobs(layer, buffers), False)
                cache.update(buffers)
                while z < len(plan.weights) and plan.weights[z][-1][0] < chunk.stop:
                    out[t, z] = sum(w * cache[u] for u, w in plan.weights[z])
                    z += 1
                keep = plan.weights[z][0][0] if z < len(plan.weights) else len(layer)
                cache = {u: a for u, a in cache.items() if u >= keep}

    @staticmethod
    def _jobs(layer: list[_Frame], buffers: dict[int, np.ndarray]) -> dict[_File, list[_Item]]:
        jobs: dict[_File, list[_Item]] = {}
        for u, buffer in buffers.items():
            frame = layer[u]
            item = (frame.index, buffer, frame.slope, frame.intercept)
            jobs.setdefault(frame.file, []).append(item)
        return jobs


def _undecodable(files: list[_File]) -> tuple[_File, str] | None:
    """The first file whose transfer syntax no installed decoder handles, and why."""
    for file in files:
        if file.pixel_offset is not None:
            continue
        try:
            decoder = get_decoder(file.syntax)
        except NotImplementedError:
            return file, (
                f"its pixel data uses the transfer syntax {file.syntax.name} "
                f"({file.syntax}), which pydicom cannot decode"
            )
        if not decoder.is_available:
            return file, (
                f"its pixel data is compressed as {file.syntax.name} ({file.syntax}) "
                f"and no decoder for it is installed; "
                f"pip install {_decoder_packages(file.syntax)}"
            )
    return None


def _metadata(stack: _Stack, plan: _Plan) -> dict[str, Any]:
    file = plan.layers[0][0].file
    metadata = dict(file.fields)
    metadata["image_type"] = file.image_type
    metadata["transfer_syntax"] = str(file.syntax.name)
    metadata["series_key"] = stack.key
    metadata["geometry_warnings"] = list(plan.warnings)
    if plan.frame_axis:
        metadata["frame_axis"] = plan.frame_axis
    return metadata


def _decode_plan(
    plan: _Plan, frames: list[_Frame], widen: bool, decoder: _Decoder, name: str
) -> np.ndarray:
    """Allocate the output once and decode into it ((t, z, y, x), t = 1 for a 3D stack)."""
    resample = plan.mode == "resample"
    dtype, checked = (np.dtype(np.float32), False) if resample else _output_dtype(frames, widen)
    shape = (len(plan.layers), *plan.shape[-3:])
    extent = "x".join(map(str, shape if shape[0] > 1 else shape[1:]))
    check_memory(
        int(np.prod(shape, dtype=np.float64)) * dtype.itemsize, f"{name} ({extent} voxels)"
    )
    out = np.empty(shape, dtype)
    decoder.failures = {}
    if resample:
        decoder.resample(plan, out)
    else:
        decoder.direct(plan, out, checked)
    return out


def _left_out(file: _File, reason: str, stack: _Stack) -> SkippedFile:
    """A file of ``stack`` left out, named by its place, series and instance (never its name)."""
    return SkippedFile(
        file.position, reason, _stack_name(stack), file.instance or None, _path=file.path
    )


def _decode_stack(stack: _Stack, decoder: _Decoder, skipped: list[SkippedFile]) -> Volume:
    """Decode one stack, leaving out files that fail (and re-planning without them)."""
    frames, widen = list(stack.frames), False
    while True:
        plan = _plan(_Stack(stack.key, frames))
        try:
            out = _decode_plan(plan, frames, widen, decoder, _stack_name(stack))
        except _OverflowError:
            widen = True
            continue
        if not decoder.failures:
            break
        del out
        skipped.extend(_left_out(f, reason, stack) for f, reason in decoder.failures.items())
        frames = [f for f in frames if f.file not in decoder.failures]
        if not frames:
            file, reason = next(iter(decoder.failures.items()))
            raise UnreadableScanError(f"{_stack_name(stack)}: instance {file.instance}: {reason}")
    voxels = out[0] if len(plan.layers) == 1 else out
    modality = str(plan.layers[0][0].file.fields.get("modality", "OT"))
    return Volume(voxels, lps_to_world(plan.affine_lps), modality, _metadata(stack, plan))
