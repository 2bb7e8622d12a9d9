"""Untrusted headers: resource guards and geometry checks at the edge of the DICOM and NIfTI
readers. Each case states the exact outcome: a documented error or a slice skipped with its
reason, never a NaN, a singular affine, a raw exception or a huge allocation."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dicom_helpers import (
    AXIAL,
    assert_slices_in_place,
    file_positions,
    slice_pixels,
    stack_positions,
    write_stack,
)
from pydicom import dcmread, dcmwrite
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import RLELossless

from napari_scan_classifier.errors import (
    GeometryError,
    ResourceLimitError,
    UnreadableScanError,
)
from napari_scan_classifier.io.dicom import list_series, load_dicom
from napari_scan_classifier.io.dicom_write import SeriesUIDs, slice_dataset, write_series
from napari_scan_classifier.io.nifti import load_nifti, save_nifti
from napari_scan_classifier.limits import BUDGET_ENV
from napari_scan_classifier.volume import Volume

POSITIONS = stack_positions(4, (0.0, 0.0, 2.5))


def damage(path: Path, keyword: str, value: bytes, vr: str) -> None:
    """Rewrite one element of a file with raw bytes pydicom neither checks nor fixes."""
    ds = dcmread(path)
    tag = Tag(keyword)
    ds._dict[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
    dcmwrite(path, ds)


def series_with_last_slice(tmp_path: Path, keyword: str, value: bytes, vr: str = "DS") -> list:
    paths = write_stack(tmp_path, POSITIONS)
    damage(paths[-1], keyword, value, vr)
    return paths


# ----------------------------------------------------------------------------- DICOM geometry


@pytest.mark.parametrize(
    ("keyword", "value", "reason"),
    [
        (
            "PixelSpacing",
            b"0\\0",
            "its pixel spacing (0\\0) is not two positive finite lengths in mm",
        ),
        (
            "PixelSpacing",
            b"-0.8\\-0.6",
            "its pixel spacing (-0.8\\-0.6) is not two positive finite lengths in mm",
        ),
        (
            "ImagePositionPatient",
            b"nan\\0\\0 ",
            "its image position (ImagePositionPatient) is not a finite number",
        ),
        (
            "ImagePositionPatient",
            b"1e300\\0\\0",
            "its image position (ImagePositionPatient) lies over a kilometre from the origin",
        ),
        (
            "ImageOrientationPatient",
            b"1\\0\\0\\1\\0\\0 ",
            "its image orientation (ImageOrientationPatient) is not two perpendicular unit "
            "vectors (lengths 1 and 1, cosine 1)",
        ),
        (
            "RescaleSlope",
            b"0 ",
            "its RescaleSlope is 0: every pixel would have the same value",
        ),
        (
            "RescaleIntercept",
            b"inf ",
            "its rescale (slope 1, intercept inf) is not finite",
        ),
    ],
)
def test_a_slice_with_unusable_geometry_is_skipped_with_its_reason(
    tmp_path, keyword, value, reason
):
    paths = series_with_last_slice(tmp_path, keyword, value)

    result = load_dicom(tmp_path)

    (skipped,) = result.skipped
    assert (skipped.label, skipped.reason) == (
        f"file {file_positions(tmp_path)[paths[-1]]}",
        reason,
    )
    assert skipped.local_path() == paths[-1]
    (volume,) = result.volumes
    assert_slices_in_place(volume, POSITIONS[:3], [slice_pixels(k) for k in range(3)])


def test_a_series_whose_every_slice_is_unusable_is_refused_with_the_reason(tmp_path):
    paths = write_stack(tmp_path, POSITIONS)
    for path in paths:
        damage(path, "ImageOrientationPatient", b"0\\0\\0\\0\\0\\0 ", "DS")

    with pytest.raises(UnreadableScanError) as caught:
        load_dicom(tmp_path)

    assert str(caught.value) == (
        "the input: no DICOM images found in this folder (4 files checked; 4 skipped: "
        "its image orientation (ImageOrientationPatient) is not two perpendicular unit vectors "
        "(lengths 0 and 0, cosine 0))"
    )


def test_slices_that_cannot_make_an_affine_are_refused_by_name_of_series(tmp_path):
    """Two slices 0.02 mm apart along the normal but 100 m apart in plane: no usable grid."""
    write_stack(tmp_path, [(0.0, 0.0, 0.0), (1e5, 0.0, 0.02)], series_number=7)

    (info,) = list_series(tmp_path)
    with pytest.raises(GeometryError) as caught:
        load_dicom(tmp_path)

    expected = (
        f"series 7 ({info.key}): its slices cannot be placed in space: its affine is singular "
        "(voxel axes of zero length or parallel)"
    )
    assert str(caught.value) == info.problem == expected


# ----------------------------------------------------------------------------- DICOM resources


@pytest.mark.parametrize(
    ("keyword", "value", "vr", "reason"),
    [
        (
            "BitsAllocated",
            struct.pack("<H", 255),
            "US",
            "BitsAllocated 255 is not a pixel size (1, 8, 16 or 32)",
        ),
        ("BitsStored", struct.pack("<H", 17), "US", "BitsStored 17 does not fit BitsAllocated 16"),
        ("Columns", struct.pack("<H", 0), "US", "its image has 12x0 pixels (Rows or Columns is 0)"),
        (
            "SamplesPerPixel",
            struct.pack("<H", 0),
            "US",
            "SamplesPerPixel is 0: a scan has one sample per pixel",
        ),
        (
            "PixelRepresentation",
            struct.pack("<H", 2),
            "US",
            "PixelRepresentation 2 is neither 0 (unsigned) nor 1 (signed)",
        ),
        (
            "NumberOfFrames",
            b"2147483647 ",
            "IS",
            "it declares 2147483647 frames, more than the 100000 one file may hold",
        ),
    ],
)
def test_an_impossible_pixel_format_is_refused_before_reading_pixels(
    tmp_path, keyword, value, vr, reason
):
    (path,) = write_stack(tmp_path, POSITIONS[:1])
    damage(path, keyword, value, vr)

    with pytest.raises(UnreadableScanError) as caught:
        list_series(path)

    assert str(caught.value) == f"the input: {reason}"


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        (99_999, "it declares 99999 frames but its compressed pixel data holds only {} bytes"),
        (1_000_000, "it declares 1000000 frames, more than the 100000 one file may hold"),
        (2**31 - 1, "it declares 2147483647 frames, more than the 100000 one file may hold"),
    ],
)
def test_a_tiny_compressed_file_declaring_many_frames_is_refused_from_its_header(
    tmp_path, frames, reason
):
    ds = slice_dataset(
        slice_pixels(0),
        position=(0, 0, 0),
        orientation=AXIAL,
        pixel_spacing=(1, 1),
        uids=SeriesUIDs(),
    )
    ds.compress(RLELossless, generate_instance_uid=False)
    ds.NumberOfFrames = frames
    dcmwrite(tmp_path / "rle.dcm", ds, enforce_file_format=True)
    encapsulated = len(ds.PixelData) + 8  # the items, then the sequence delimiter

    with pytest.raises(UnreadableScanError) as caught:
        list_series(tmp_path / "rle.dcm")

    assert str(caught.value) == f"the input: {reason.format(encapsulated)}"


def test_a_series_larger_than_the_memory_budget_is_refused_with_its_size(tmp_path, monkeypatch):
    write_stack(tmp_path, POSITIONS, series_number=3)
    monkeypatch.setenv(BUDGET_ENV, "900")

    (info,) = list_series(tmp_path)  # listing reads headers only: never refused
    with pytest.raises(ResourceLimitError) as caught:
        load_dicom(tmp_path)

    assert info.shape == (4, 12, 10)
    assert str(caught.value) == (
        f"series 3 ({info.key}) (4x12x10 voxels) would need 960 bytes of memory, more than the "
        f"budget of 900 bytes (set {BUDGET_ENV} to change it)"
    )


def write_gzipped_stack(folder: Path, *, header: int = 0, trailing: int = 0) -> Path:
    """Three RLE slices, each gzipped; the first gets ``header`` zero bytes in a private element
    and ``trailing`` zero bytes after its pixel data. Returns the first file."""
    uids = SeriesUIDs()
    for k, position in enumerate(POSITIONS[:3]):
        ds = slice_dataset(
            slice_pixels(k),
            position=position,
            orientation=AXIAL,
            pixel_spacing=(0.8, 0.6),
            uids=uids,
            instance_number=k + 1,
        )
        ds.compress(RLELossless)
        if k == 0 and header:
            ds.private_block(0x0029, "A VENDOR", create=True).add_new(0x10, "OB", bytes(header))
        if k == 0 and trailing:
            ds.DataSetTrailingPadding = bytes(trailing)
        plain = folder / f"{k}.dcm"
        dcmwrite(plain, ds, enforce_file_format=True)
        (folder / f"{k}.dcm.gz").write_bytes(gzip.compress(plain.read_bytes()))
        plain.unlink()
    return folder / "0.dcm.gz"


BOMB_REASON = (
    f"gzipped, it expands to more than the memory budget of 1.0 MiB (set {BUDGET_ENV} to change it)"
)


def test_a_gzipped_header_that_expands_past_the_budget_is_skipped(tmp_path, monkeypatch):
    packed = write_gzipped_stack(tmp_path, header=3_000_000)  # a few kB of gzip
    monkeypatch.setenv(BUDGET_ENV, "1M")

    (info,) = list_series(tmp_path)
    result = load_dicom(tmp_path)

    assert packed.stat().st_size < 10_000
    assert info.n_frames == 2
    assert [(s.label, s.reason) for s in result.skipped] == [("file 1", BOMB_REASON)]
    assert result.volumes[0].shape == (2, 12, 10)


def test_gzipped_pixel_data_that_expands_past_the_budget_is_skipped(tmp_path, monkeypatch):
    packed = write_gzipped_stack(tmp_path, trailing=3_000_000)  # read only when decoding
    monkeypatch.setenv(BUDGET_ENV, "1M")

    (info,) = list_series(tmp_path)  # listing reads headers only
    result = load_dicom(tmp_path)

    assert packed.stat().st_size < 10_000
    assert info.n_frames == 3
    (skipped,) = result.skipped
    assert skipped.reason == BOMB_REASON
    assert skipped.label.startswith("file 1 (series 1 (")
    assert result.volumes[0].shape == (2, 12, 10)


def test_gzipped_files_within_the_budget_load_whole(tmp_path):
    write_gzipped_stack(tmp_path, header=3_000_000, trailing=3_000_000)

    result = load_dicom(tmp_path)

    assert result.skipped == []
    assert_slices_in_place(result.volumes[0], POSITIONS[:3], [slice_pixels(k) for k in range(3)])


# ----------------------------------------------------------------------------- NIfTI


def nifti_with(path: Path, **fields) -> Path:
    """A small NIfTI-1 file (8x7x6 int16) with header fields overwritten by struct."""
    voxels = np.arange(8 * 7 * 6, dtype=np.int16).reshape(8, 7, 6)
    affine = np.diag([0.9, 0.8, 2.5, 1.0])
    affine[:3, 3] = (-10, 20, 5)
    image = nib.Nifti1Image(voxels, affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    data = bytearray(image.to_bytes())
    offsets = {"dim": 40, "pixdim": 76, "quatern_b": 256, "srow_x": 280}
    for name, (fmt, values) in fields.items():
        struct.pack_into(f"<{fmt}", data, offsets[name], *values)
    path.write_bytes(bytes(data))
    return path


def test_nifti_with_a_zero_dimension_is_refused_not_an_empty_volume(tmp_path):
    path = nifti_with(tmp_path / "scan.nii", dim=("4h", (3, 8, 0, 6)))

    with pytest.raises(UnreadableScanError) as caught:
        load_nifti(path)

    assert str(caught.value) == "the input: its header declares (8, 0, 6) voxels (an empty image)"


def test_nifti_declaring_a_huge_grid_is_refused_with_its_size(tmp_path, monkeypatch):
    path = nifti_with(tmp_path / "scan.nii", dim=("4h", (3, 32767, 32767, 32767)))
    monkeypatch.setenv(BUDGET_ENV, "1G")

    with pytest.raises(ResourceLimitError) as caught:
        load_nifti(path)

    assert str(caught.value) == (
        "the input (32767x32767x32767 voxels) would need 64.0 TiB of memory, more than the "
        f"budget of 1.0 GiB (set {BUDGET_ENV} to change it)"
    )


def test_nifti_nan_sform_falls_back_to_the_qform_and_says_so(tmp_path):
    path = nifti_with(tmp_path / "scan.nii", srow_x=("4f", (np.nan, 0, 0, -10)))
    reference = nib.load(path)

    volume = load_nifti(path)

    expected = nib.load(path).header.get_qform()
    np.testing.assert_allclose(volume.nifti_affine(), expected, atol=1e-5)
    assert np.all(np.isfinite(volume.affine))
    assert reference.header["sform_code"] == 1
    assert volume.metadata["geometry_warnings"] == [
        "its sform is unusable (its affine is not finite) and was ignored"
    ]


def test_nifti_with_only_a_voxel_size_says_what_was_assumed(tmp_path):
    path = nifti_with(
        tmp_path / "scan.nii", srow_x=("4f", (0, 0, 0, 0)), quatern_b=("f", (np.nan,))
    )

    volume = load_nifti(path)

    np.testing.assert_allclose(volume.spacing, (2.5, 0.8, 0.9), rtol=1e-6)
    assert volume.metadata["geometry_warnings"] == [
        "its sform is unusable (its affine is singular (voxel axes of zero length or parallel)) "
        "and was ignored",
        "its qform is unusable (its affine is not finite) and was ignored",
        "its voxel size (pixdim) grid was used: orientation and position unknown",
    ]


def test_nifti_with_no_usable_geometry_is_refused(tmp_path):
    path = nifti_with(
        tmp_path / "scan.nii",
        srow_x=("4f", (0, 0, 0, 0)),
        quatern_b=("f", (np.nan,)),
        pixdim=("4f", (1, np.nan, 0.8, 2.5)),
    )

    with pytest.raises(GeometryError) as caught:
        load_nifti(path)

    assert str(caught.value) == (
        "the input: no usable geometry: its sform is unusable (its affine is singular (voxel "
        "axes of zero length or parallel)) and was ignored; its qform is unusable (its affine "
        "is not finite) and was ignored; its voxel size (pixdim) is unusable (its affine is not "
        "finite) and was ignored"
    )


def test_nifti_nan_voxels_are_reported(tmp_path):
    voxels = np.ones((4, 3, 2), np.float32)
    voxels[1, 2, 0] = np.nan
    voxels[0, 0, 1] = np.inf
    nib.save(nib.Nifti1Image(voxels, np.eye(4)), tmp_path / "map.nii")

    volume = load_nifti(tmp_path / "map.nii")

    assert np.isnan(volume.voxels[0, 2, 1]) and np.isinf(volume.voxels[1, 0, 0])
    assert volume.metadata["geometry_warnings"] == ["2 voxel(s) hold NaN or infinity in the file"]


def test_undecodable_series_is_named_by_series_and_instance_never_by_file(tmp_path):
    (path,) = write_stack(tmp_path, POSITIONS[:1], transfer_syntax=RLELossless, series_number=5)
    path.write_bytes(path.read_bytes()[:-60])
    (info,) = list_series(tmp_path)

    with pytest.raises(UnreadableScanError) as caught:
        load_dicom(tmp_path)

    message = str(caught.value)
    assert message.startswith(
        f"series 5 ({info.key}): instance 1: pixel data could not be decoded ("
    )
    assert path.name not in message and str(tmp_path) not in message


@pytest.mark.parametrize("bad", [np.nan, 0.0])
def test_writers_refuse_an_affine_that_cannot_place_voxels(tmp_path, bad):
    affine = np.diag([2.5, 0.8, 0.6, 1.0])
    affine[1, 1] = bad
    volume = Volume(np.zeros((3, 4, 5), np.int16), affine, "CT")
    problem = (
        "its affine is not finite"
        if np.isnan(bad)
        else ("its affine is singular (voxel axes of zero length or parallel)")
    )

    with pytest.raises(GeometryError) as nifti:
        save_nifti(volume, tmp_path / "out.nii.gz")
    with pytest.raises(GeometryError) as dicom:
        write_series(volume, tmp_path / "series")

    assert str(nifti.value) == f"out.nii.gz: not written: {problem}"
    assert str(dicom.value) == f"the series cannot be written: {problem}"
    assert not any(tmp_path.iterdir())
