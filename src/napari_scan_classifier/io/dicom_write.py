"""Write volumes as DICOM series, one CT or MR Image Storage file per slice.

Used to make the sample data and, in tests, series with known geometry (shuffled file names, gaps,
tilt, other transfer syntaxes) whose every pixel position the reader must recover.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from napari_scan_classifier.errors import GeometryError
from napari_scan_classifier.io.checks import affine_problem
from napari_scan_classifier.volume import Volume, world_to_lps

_SOP_CLASSES = {"CT": CTImageStorage, "MR": MRImageStorage}
_INT16 = np.iinfo(np.int16)
_REPRODUCIBLE_DATE = "20000101"


@dataclass(frozen=True)
class SeriesUIDs:
    """The UIDs every slice of one series shares (fresh random ones by default)."""

    study: str = field(default_factory=generate_uid)
    series: str = field(default_factory=generate_uid)
    frame_of_reference: str = field(default_factory=generate_uid)


@dataclass(frozen=True)
class StackGeometry:
    """DICOM geometry of a stack: slice k's first pixel lies at ``origin + k * step`` (LPS mm)."""

    origin: np.ndarray
    step: np.ndarray
    orientation: tuple[float, ...]
    pixel_spacing: tuple[float, float]

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.orientation[:3], self.orientation[3:])

    def position(self, k: int) -> np.ndarray:
        return self.origin + k * self.step


def stack_geometry(affine: np.ndarray) -> StackGeometry:
    """Split a world (z, y, x) affine into IPP origin, slice step, IOP and PixelSpacing.

    The slice step may lean out of the normal (a sheared, gantry-tilted stack); the in-plane
    axes must be perpendicular because DICOM cannot describe anything else.
    """
    lps = world_to_lps(affine)
    col_step, row_step = lps[:3, 1], lps[:3, 2]  # along rows (y index), along columns (x index)
    row_spacing, col_spacing = float(np.linalg.norm(col_step)), float(np.linalg.norm(row_step))
    row_cosines, col_cosines = row_step / col_spacing, col_step / row_spacing
    if abs(float(row_cosines @ col_cosines)) > 1e-4:
        raise ValueError("the volume's in-plane axes are not perpendicular; DICOM cannot store it")
    return StackGeometry(
        origin=lps[:3, 3].copy(),
        step=lps[:3, 0].copy(),
        orientation=tuple(float(v) for v in (*row_cosines, *col_cosines)),
        pixel_spacing=(row_spacing, col_spacing),
    )


def _ds_values(values: Sequence[float]) -> list[str]:
    """Decimal strings that fit DICOM's 16-character DS limit."""
    return [format_number_as_ds(float(v)) for v in values]


def slice_dataset(
    pixels: np.ndarray,
    *,
    position: Sequence[float],
    orientation: Sequence[float],
    pixel_spacing: Sequence[float],
    uids: SeriesUIDs,
    modality: str = "CT",
    instance_number: int = 1,
    rescale: tuple[float, float] = (1.0, 0.0),
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    series_description: str = "",
    series_number: int = 1,
    patient_name: str = "ANONYMOUS",
    slice_thickness: float | None = None,
    window: tuple[float, float] | None = None,
    bits_stored: int | None = None,
    body_part: str | None = None,
    sop_uid: str | None = None,
    content_date: str | None = None,
) -> FileDataset:
    """One single-frame CT/MR image holding ``pixels`` (stored values, 2D integer array).

    ``rescale`` is (slope, intercept); ``position`` is the LPS IPP of pixel (0, 0) and
    ``pixel_spacing`` is DICOM's (row spacing, column spacing). ``sop_uid`` and ``content_date``
    default to a fresh UID and today; fix them for byte-identical output.
    """
    if modality not in _SOP_CLASSES:
        raise ValueError(f"modality {modality!r}: only {sorted(_SOP_CLASSES)} can be written")
    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.dtype.kind not in "iu":
        raise ValueError(f"a slice needs 2D integer pixels, got {pixels.dtype} {pixels.shape}")
    sop_uid = sop_uid or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _SOP_CLASSES[modality]
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", Dataset(), file_meta=meta, preamble=b"\0" * 128)
    today = content_date or _dt.date.today().strftime("%Y%m%d")
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids.study, uids.series
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = uids.frame_of_reference, ""
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, "", "", ""
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
    ds.Modality, ds.Manufacturer = modality, "napari-scan-classifier"
    ds.SeriesDescription, ds.SeriesNumber = series_description, series_number
    ds.InstanceNumber, ds.AcquisitionNumber = instance_number, 1
    ds.ImageType = list(image_type)
    ds.PatientPosition = "HFS"
    ds.ImagePositionPatient = _ds_values(position)
    ds.ImageOrientationPatient = _ds_values(orientation)
    ds.PixelSpacing = _ds_values(pixel_spacing)
    if slice_thickness is not None:
        ds.SliceThickness = format_number_as_ds(float(slice_thickness))
    ds.RescaleSlope, ds.RescaleIntercept = _ds_values(rescale)
    if modality == "CT":
        ds.KVP, ds.RescaleType = "120", "HU"
    else:
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "RM", "NONE", ""
        ds.MRAcquisitionType, ds.EchoTime, ds.RepetitionTime, ds.EchoTrainLength = "2D", 10, 500, 1
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = _ds_values(window)
    if body_part:
        ds.BodyPartExamined = body_part
    ds.set_pixel_data(
        pixels, "MONOCHROME2", bits_stored or 8 * pixels.dtype.itemsize, generate_instance_uid=False
    )
    return ds


def save_dataset(
    ds: FileDataset,
    folder: str | Path,
    transfer_syntax: str = ExplicitVRLittleEndian,
    *,
    reproducible: bool = False,
) -> Path:
    """Write ``ds`` atomically under a name that never follows slice order.

    The name is random, or with ``reproducible`` a hash of the SOP instance UID.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    syntax = UID(transfer_syntax)
    if syntax.is_compressed:
        ds.compress(syntax, generate_instance_uid=False)
    else:
        if not syntax.is_little_endian and ds.BitsAllocated > 8:  # pydicom writes bytes as given
            dtype = np.dtype(f"<{'i' if ds.PixelRepresentation else 'u'}{ds.BitsAllocated // 8}")
            ds.PixelData = np.frombuffer(ds.PixelData, dtype).byteswap().tobytes()
        ds.file_meta.TransferSyntaxUID = syntax
    stem = _uid_hash(ds.SOPInstanceUID) if reproducible else uuid.uuid4().hex
    path = folder / f"{stem}.dcm"
    partial = folder / f".{path.name}.partial"
    dcmwrite(
        partial,
        ds,
        implicit_vr=syntax.is_implicit_VR,
        little_endian=syntax.is_little_endian,
        enforce_file_format=True,
    )
    os.replace(partial, path)
    return path


def write_slice(
    folder: str | Path,
    pixels: np.ndarray,
    *,
    transfer_syntax: str = ExplicitVRLittleEndian,
    **dataset_fields: Any,
) -> Path:
    """Write one slice anywhere in space (for uneven gaps, tilt, localizers in tests)."""
    return save_dataset(slice_dataset(pixels, **dataset_fields), folder, transfer_syntax)


def _stored_values(voxels: np.ndarray, intercept: float) -> np.ndarray:
    """Voxel values (HU for CT) as int16 stored values ``round(v) - intercept``."""
    stored = np.rint(np.asarray(voxels, dtype=np.float64)) - intercept
    if not np.all(np.isfinite(stored)):
        raise ValueError("voxel values must be finite to be written as DICOM pixels")
    if stored.size and (stored.min() < _INT16.min or stored.max() > _INT16.max):
        raise ValueError("voxel values do not fit 16-bit DICOM pixels")
    return stored.astype(np.int16)


def _uid_hash(uid: str) -> str:
    return hashlib.sha256(uid.encode("ascii")).hexdigest()[:32]


def _derived_uid(parent: str, part: str) -> str:
    return generate_uid(entropy_srcs=[parent, part])


def write_series(
    volume: Volume,
    folder: str | Path,
    *,
    series_description: str = "",
    series_number: int = 1,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_name: str = "ANONYMOUS",
    transfer_syntax: str = ExplicitVRLittleEndian,
    window: tuple[float, float] | None = None,
) -> list[Path]:
    """Write a 3D CT or MR volume as one file per slice; returns the paths in slice order.

    Voxels are rounded to integers and stored as int16 with slope 1 (CT: intercept -1024, so
    stored values are HU + 1024). IPP/IOP/PixelSpacing come from the (possibly sheared) affine.
    Given ``series_uid``, the output is byte-for-byte reproducible: every other UID, the file
    names and the dates derive from it (sample data regenerates without churn).
    """
    if volume.voxels.ndim != 3:
        raise ValueError("write_series writes 3D (z, y, x) volumes")
    problem = affine_problem(volume.affine)
    if problem:
        raise GeometryError(f"the series cannot be written: {problem}")
    geometry = stack_geometry(volume.affine)
    uids = SeriesUIDs(**{k: v for k, v in (("study", study_uid), ("series", series_uid)) if v})
    if series_uid:
        uids = replace(uids, frame_of_reference=_derived_uid(series_uid, "frame-of-reference"))
    intercept = -1024.0 if volume.modality == "CT" else 0.0
    if window is None and volume.metadata.get("window_center") is not None:
        window = (volume.metadata["window_center"], volume.metadata["window_width"])
    thickness = abs(float(geometry.step @ geometry.normal))
    paths = []
    for k, plane in enumerate(volume.voxels):
        ds = slice_dataset(
            _stored_values(plane, intercept),
            position=geometry.position(k),
            orientation=geometry.orientation,
            pixel_spacing=geometry.pixel_spacing,
            uids=uids,
            modality=volume.modality,
            instance_number=k + 1,
            rescale=(1.0, intercept),
            series_description=series_description,
            series_number=series_number,
            patient_name=patient_name,
            slice_thickness=thickness,
            window=window,
            body_part=volume.metadata.get("body_part"),
            sop_uid=_derived_uid(series_uid, f"slice-{k}") if series_uid else None,
            content_date=_REPRODUCIBLE_DATE if series_uid else None,
        )
        paths.append(save_dataset(ds, folder, transfer_syntax, reproducible=bool(series_uid)))
    return paths
