"""The frames one file contributes: single-frame, enhanced multi-frame, classic multi-frame."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from napari_scan_classifier.io.dicom.headers import (
    _NOT_IMAGES,
    _float,
    _floats,
    _frame_group,
    _int,
    _locate_pixels,
    _new_file,
    _no_pixels_reason,
    _order,
    _position,
    _read_dataset,
    _rescale,
    _strings,
    _syntax_of,
    _tag,
    _text,
)
from napari_scan_classifier.io.dicom.mosaic import _mosaic_frames
from napari_scan_classifier.io.dicom.records import _DEFAULT_IOP, _File, _Frame, _SkipFileError


def _read_file(path: Path, known: dict[tuple, dict]) -> list[_Frame]:
    """The frames one file contributes; raises _SkipFileError with the reason it is unusable.

    ``known`` caches series-level fields by series UID and number: read once per series.
    """
    try:
        with open(path, "rb") as fp:
            ds = _read_dataset(fp)
            if _tag("Rows") not in ds or _tag("Columns") not in ds:
                raise _SkipFileError(_no_pixels_reason(ds))
            modality = _text(ds, "Modality")
            if modality in _NOT_IMAGES:
                raise _SkipFileError(f"a {modality} object, not an image")
            syntax = _syntax_of(ds)
            file = _new_file(path, ds, syntax, known)
            if file.samples != 1:
                raise _SkipFileError("colour (RGB) images are not supported as scans")
            size = os.fstat(fp.fileno()).st_size
            offset = _locate_pixels(fp, ds, size, file.frame_bytes * file.n_frames)
            file.pixel_offset = offset if file.bits_allocated in (8, 16, 32) else None
            return _frames_of(ds, file)
    except _SkipFileError:
        raise
    except OSError as exc:
        raise _SkipFileError(f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    except Exception as exc:
        reason = f"unreadable or truncated DICOM header ({type(exc).__name__})"
        raise _SkipFileError(reason) from None


def _frames_of(ds: Dataset, file: _File) -> list[_Frame]:
    if _tag("PerFrameFunctionalGroupsSequence") in ds:
        return _enhanced_frames(ds, file)
    if "MOSAIC" in file.image_type and file.n_frames == 1:
        return _mosaic_frames(ds, file)
    if file.n_frames > 1:
        return _legacy_frames(ds, file)
    slope, intercept = _rescale(ds, ds)
    return [
        _Frame(
            file,
            0,
            file.rows,
            file.cols,
            position=_position(ds),
            orientation=_floats(ds, "ImageOrientationPatient", 6),
            pixel_spacing=_floats(ds, "PixelSpacing", 2),
            thickness=_float(ds, "SpacingBetweenSlices") or _float(ds, "SliceThickness"),
            slope=slope,
            intercept=intercept,
            order=_order(ds, file.path),
        )
    ]


def _enhanced_frames(ds: Dataset, file: _File) -> list[_Frame]:
    """Frames of an enhanced multi-frame image, from its functional groups."""
    frames = []
    per_frame = ds.PerFrameFunctionalGroupsSequence
    for index in range(file.n_frames):
        item = per_frame[index] if index < len(per_frame) else None
        measures = _frame_group(ds, item, "PixelMeasuresSequence")
        content = _frame_group(ds, item, "FrameContentSequence")
        kind = next(
            (
                _strings(g, "FrameType")
                for g in (
                    _frame_group(ds, item, seq)
                    for seq in (
                        "MRImageFrameTypeSequence",
                        "CTImageFrameTypeSequence",
                        "PETFrameTypeSequence",
                    )
                )
                if g is not None
            ),
            [],
        )
        slope, intercept = _rescale(_frame_group(ds, item, "PixelValueTransformationSequence"), ds)
        frames.append(
            _Frame(
                file,
                index,
                file.rows,
                file.cols,
                position=_position(_frame_group(ds, item, "PlanePositionSequence")),
                orientation=_floats(
                    _frame_group(ds, item, "PlaneOrientationSequence"), "ImageOrientationPatient", 6
                ),
                pixel_spacing=_floats(measures, "PixelSpacing", 2),
                thickness=_float(measures, "SpacingBetweenSlices")
                or _float(ds, "SpacingBetweenSlices")
                or _float(measures, "SliceThickness"),
                slope=slope,
                intercept=intercept,
                kind=tuple(kind),
                order=(_int(content, "TemporalPositionIndex"), 0, 0, 0, "", index),
            )
        )
    return frames


def _legacy_frames(ds: Dataset, file: _File) -> list[_Frame]:
    """Frames of a classic multi-frame image (RT dose, NM, cine): one IPP for the whole file,
    frames stepping along the normal by GridFrameOffsetVector or the slice spacing."""
    origin = _position(ds)
    iop = _floats(ds, "ImageOrientationPatient", 6)
    spacing = _float(ds, "SpacingBetweenSlices") or _float(ds, "SliceThickness")
    offsets = _floats(ds, "GridFrameOffsetVector", file.n_frames)
    positions: list[np.ndarray | None] = [None] * file.n_frames
    if origin is not None and not file.time_frames:
        normal = np.cross(*np.reshape(iop or _DEFAULT_IOP, (2, 3)))
        if offsets is not None:
            positions = [origin + (s - offsets[0]) * normal for s in offsets]
        elif spacing:
            positions = [origin + k * spacing * normal for k in range(file.n_frames)]
    slope, intercept = _rescale(ds, ds)
    return [
        _Frame(
            file,
            k,
            file.rows,
            file.cols,
            position=positions[k],
            orientation=iop,
            pixel_spacing=_floats(ds, "PixelSpacing", 2),
            thickness=spacing,
            slope=slope,
            intercept=intercept,
            order=(0, 0, 0, 0, "", k),
        )
        for k in range(file.n_frames)
    ]
