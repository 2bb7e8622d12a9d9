"""Scans on disk for the plugin tests, written with pydicom directly so the expected geometry is
known independently of the package's own readers and writers.

DICOM geometry: the pixel at (row r, column c) of a slice lies at
``IPP + c * PixelSpacing[1] * IOP[:3] + r * PixelSpacing[0] * IOP[3:]`` (LPS mm).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-4711-SECRET"
WINDOW = (50.0, 350.0)  # (center, width)
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # rows run towards L, columns towards P
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # rows run towards P, columns towards the feet

# The small CT series: anisotropic so any axis mix-up shows.
ROWS, COLUMNS, SLICES = 10, 12, 6
ROW_SPACING, COLUMN_SPACING, SLICE_SPACING = 0.8, 0.6, 2.5
ORIGIN_LPS = np.array([-30.0, -20.0, 100.0])  # first slice, first pixel
MARKER = (4, 7, 9)  # (slice k, row, column) in file order
MARKER_HU = 1000

# The orientation object: a body with a ball at the patient's right-anterior-superior.
BALL_LPS = np.array([-25.0, -25.0, 25.0])
BALL_HU = 600


@dataclass(frozen=True)
class DicomSeries:
    folder: Path
    description: str
    marker_lps: np.ndarray


@dataclass(frozen=True)
class Stack:
    """Where a series' slices are: orientation, first position, step between slices, spacing."""

    iop: tuple[float, ...]
    first_ipp: np.ndarray
    step: np.ndarray
    pixel_spacing: tuple[float, float]  # (between rows, between columns)

    def pixel_lps(self, k: int, rows: int, columns: int) -> np.ndarray:
        """(rows, columns, 3) LPS positions of slice k's pixels."""
        r, c = np.meshgrid(np.arange(rows), np.arange(columns), indexing="ij")
        along_row, along_column = np.array(self.iop[:3]), np.array(self.iop[3:])
        return (
            self.first_ipp
            + k * self.step
            + c[..., None] * self.pixel_spacing[1] * along_row
            + r[..., None] * self.pixel_spacing[0] * along_column
        )


def write_slices(folder: Path, hu: np.ndarray, stack: Stack, description: str, number: int) -> None:
    """One CT file per slice of ``hu`` (k, rows, columns), instance numbers not in spatial order."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid, study_uid = generate_uid(), generate_uid()
    for k, pixels in enumerate(hu):
        ds = _ct_dataset(pixels, series_uid, study_uid, description, number)
        ds.InstanceNumber = (k * 7) % len(hu) + 1  # readers must sort by position, not by this
        ds.ImagePositionPatient = [float(v) for v in stack.first_ipp + k * stack.step]
        ds.ImageOrientationPatient = list(stack.iop)
        ds.PixelSpacing = list(stack.pixel_spacing)
        ds.SliceThickness = float(np.linalg.norm(stack.step))
        ds.save_as(folder / f"slice_{k:03d}.dcm", enforce_file_format=True)


def marker_lps() -> np.ndarray:
    """Where MARKER is in the patient (LPS mm), straight from the DICOM geometry equations."""
    k, row, column = MARKER
    return ORIGIN_LPS + np.array([column * COLUMN_SPACING, row * ROW_SPACING, k * SLICE_SPACING])


def write_ct_series(folder: Path, description: str, series_number: int) -> DicomSeries:
    """A small axial CT series of air with one bright voxel at MARKER."""
    hu = np.full((SLICES, ROWS, COLUMNS), -1000, dtype=np.int16)
    hu[MARKER] = MARKER_HU
    step = np.array([0.0, 0.0, SLICE_SPACING])
    stack = Stack(AXIAL, ORIGIN_LPS, step, (ROW_SPACING, COLUMN_SPACING))
    write_slices(folder, hu, stack, description, series_number)
    return DicomSeries(folder, description, marker_lps())


def write_ball_phantom(folder: Path, iop: tuple[float, ...]) -> None:
    """The orientation object (see BALL_LPS) sampled on a 64^3 grid of 2 mm, acquired in planes
    of orientation ``iop``: axial and sagittal acquisitions of it must look the same in napari."""
    n, spacing = 64, 2.0
    normal = np.cross(iop[:3], iop[3:])
    centre_offset = (n - 1) / 2 * spacing * (np.array(iop[:3]) + np.array(iop[3:]) + normal)
    stack = Stack(iop, -centre_offset, spacing * normal, (spacing, spacing))
    hu = np.stack([_ball_body(stack.pixel_lps(k, n, n)) for k in range(n)])
    write_slices(folder, hu, stack, "Ball phantom", 1)


def _ball_body(lps: np.ndarray) -> np.ndarray:
    x, y, z = np.moveaxis(lps, -1, 0)
    body = (x / 60) ** 2 + (y / 45) ** 2 + (z / 55) ** 2 <= 1
    ball = np.linalg.norm(lps - BALL_LPS, axis=-1) <= 8
    return np.where(ball, BALL_HU, np.where(body, 0, -1000)).astype(np.int16)


def _ct_dataset(
    hu: np.ndarray, series_uid: str, study_uid: str, description: str, number: int
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
    ds.Modality, ds.SeriesDescription, ds.SeriesNumber = "CT", description, number
    ds.WindowCenter, ds.WindowWidth = WINDOW
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = (hu.astype(np.int32) + 1024).astype(np.int16).tobytes()
    return ds
