"""Shared helpers for the DICOM reader tests: stacks of slices with known geometry."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileDataset
from pydicom.uid import EnhancedCTImageStorage

from napari_scan_classifier.io import is_nifti
from napari_scan_classifier.io.dicom_write import SeriesUIDs, slice_dataset, write_slice
from napari_scan_classifier.volume import Volume, lps_to_world

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def rotation(axis: Sequence[float], degrees: float) -> np.ndarray:
    """Rotation matrix about ``axis`` (Rodrigues)."""
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    angle = np.radians(degrees)
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def oblique_orientation(degrees: float = 40.0) -> tuple[float, ...]:
    """An IOP rotated about a skew axis: no patient axis is aligned with the image."""
    turn = rotation((1.0, 1.0, 0.2), degrees)
    return (*(turn @ [1.0, 0, 0]), *(turn @ [0, 1.0, 0]))


def normal_of(orientation: Sequence[float]) -> np.ndarray:
    return np.cross(orientation[:3], orientation[3:])


def pixel_world(
    position: Sequence[float],
    orientation: Sequence[float],
    pixel_spacing: Sequence[float],
    row: float,
    col: float,
) -> np.ndarray:
    """Where DICOM puts pixel (row, col) of a slice, in world (I, P, L) mm.

    IPP + col * PixelSpacing[1] * row cosines + row * PixelSpacing[0] * column cosines.
    """
    lps = (
        np.asarray(position, float)
        + col * pixel_spacing[1] * np.asarray(orientation[:3])
        + row * pixel_spacing[0] * np.asarray(orientation[3:])
    )
    return (lps_to_world(np.eye(4)) @ np.append(lps, 1.0))[:3]


def slice_pixels(k: int, rows: int = 12, cols: int = 10) -> np.ndarray:
    """Stored values unique to slice k and pixel (r, c), so a misplaced pixel is noticed."""
    r, c = np.mgrid[:rows, :cols]
    return (1000 * k + 20 * r + c).astype(np.int16)


def write_stack(
    folder: Path,
    positions: Sequence[Sequence[float]],
    *,
    orientation: Sequence[float] = AXIAL,
    pixel_spacing=(0.8, 0.6),
    pixels: Sequence[np.ndarray] | None = None,
    uids: SeriesUIDs | None = None,
    **fields,
) -> list[Path]:
    """One single-frame file per position (LPS IPP), in the given order; returns the paths."""
    uids = uids or SeriesUIDs()
    pixels = pixels if pixels is not None else [slice_pixels(k) for k in range(len(positions))]
    fields.setdefault("rescale", (1.0, 0.0))
    return [
        write_slice(
            folder,
            pixels[k],
            position=pos,
            orientation=orientation,
            pixel_spacing=pixel_spacing,
            uids=uids,
            instance_number=k + 1,
            **fields,
        )
        for k, pos in enumerate(positions)
    ]


def file_positions(root: Path) -> dict[Path, int]:
    """Each file's place (1 = first) in the DICOM loader's listing of ``root``: sorted, hidden
    and NIfTI files left out (as the loader walks it where files sit only in the deepest
    folders)."""
    files = sorted(
        p
        for p in root.rglob("*")
        if not p.is_dir() and not p.name.startswith(".") and not is_nifti(p)
    )
    return {path: number for number, path in enumerate(files, start=1)}


def stack_positions(count: int, step: Sequence[float], origin=(-40.0, -30.0, 12.5)) -> list:
    return [np.asarray(origin) + k * np.asarray(step, float) for k in range(count)]


def assert_slices_in_place(
    volume: Volume,
    positions,
    pixels,
    *,
    orientation=AXIAL,
    pixel_spacing=(0.8, 0.6),
    slope: float = 1.0,
    intercept: float = 0.0,
) -> None:
    """Every input pixel sits at its true world position and holds its rescaled value."""
    rows, cols = np.asarray(pixels[0]).shape
    for position, plane in zip(positions, pixels, strict=True):
        for row, col in ((0, 0), (rows - 1, 0), (0, cols - 1), (rows - 1, cols - 1), (5, 3)):
            world = pixel_world(position, orientation, pixel_spacing, row, col)
            index = volume.world_to_index(world)[0]
            voxel = np.rint(index).astype(int)
            np.testing.assert_allclose(index, voxel, atol=1e-3)
            np.testing.assert_allclose(volume.index_to_world(voxel)[0], world, atol=1e-3)
            assert volume.voxels[tuple(voxel)] == plane[row, col] * slope + intercept


def multiframe_dataset(frames: np.ndarray, **fields) -> FileDataset:
    """A single-frame image dataset turned into a classic multi-frame one holding ``frames``."""
    fields.setdefault("uids", SeriesUIDs())
    ds = slice_dataset(frames[0], **fields)
    ds.set_pixel_data(np.asarray(frames), "MONOCHROME2", 8 * frames.dtype.itemsize)
    return ds


def enhanced_dataset(
    frames: np.ndarray, positions, orientations, rescales, pixel_spacing=(0.8, 0.6)
) -> FileDataset:
    """An Enhanced CT image: geometry and rescale per frame in functional groups only."""
    ds = multiframe_dataset(
        frames, position=positions[0], orientation=orientations[0], pixel_spacing=pixel_spacing
    )
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    for keyword in (
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "PixelSpacing",
        "RescaleSlope",
        "RescaleIntercept",
    ):
        delattr(ds, keyword)
    measures = Dataset()
    measures.PixelSpacing = list(pixel_spacing)
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PerFrameFunctionalGroupsSequence = [
        _frame_groups(position, orientation, rescale)
        for position, orientation, rescale in zip(positions, orientations, rescales, strict=True)
    ]
    return ds


def _frame_groups(position, orientation, rescale) -> Dataset:
    plane, orient, values, groups = Dataset(), Dataset(), Dataset(), Dataset()
    plane.ImagePositionPatient = [float(v) for v in position]
    orient.ImageOrientationPatient = [float(v) for v in orientation]
    values.RescaleSlope, values.RescaleIntercept = rescale
    groups.PlanePositionSequence = [plane]
    groups.PlaneOrientationSequence = [orient]
    groups.PixelValueTransformationSequence = [values]
    return groups
