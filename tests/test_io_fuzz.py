"""Property-based fuzzing of the DICOM and NIfTI readers (fixed seeds, a small budget).

Whatever is damaged (a header field, the pixel data, random bytes), the contract holds: the
reader raises an error of the package's family, or returns volumes with a finite, non-singular
affine, finite voxels and no empty axis. Never a raw exception, a NaN or a singular affine.
``benchmarks/fuzz_io.py`` runs the same kinds of mutants in bulk and tallies the outcomes.
"""

from __future__ import annotations

import gzip
import struct
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from dicom_helpers import AXIAL, enhanced_dataset, slice_pixels, stack_positions
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmwrite
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from napari_scan_classifier.errors import ScanClassifierError
from napari_scan_classifier.io import LoadResult, load_scans
from napari_scan_classifier.io.dicom import list_series
from napari_scan_classifier.io.dicom_write import SeriesUIDs, slice_dataset

FUZZ = settings(
    derandomize=True,
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

HEADER_DAMAGE = {
    "PixelSpacing": ("DS", ["0\\0", "nan\\nan", "inf\\1", "-0.8\\-0.6", "1e308\\1", "", "x\\y"]),
    "ImagePositionPatient": ("DS", ["nan\\0\\0", "inf\\0\\0", "1e300\\0\\0", "", "a\\b\\c"]),
    "ImageOrientationPatient": (
        "DS",
        ["1\\0\\0\\1\\0\\0", "0\\0\\0\\0\\0\\0", "nan\\0\\0\\0\\1\\0"],
    ),
    "RescaleSlope": ("DS", ["0", "nan", "inf", "-1e308", "1e308"]),
    "RescaleIntercept": ("DS", ["nan", "inf", "1e308"]),
    "SliceThickness": ("DS", ["0", "-5", "nan"]),
    "Rows": ("US", [0, 1, 65535]),
    "Columns": ("US", [0, 1, 65535]),
    "BitsAllocated": ("US", [0, 1, 7, 12, 24, 64, 255]),
    "BitsStored": ("US", [0, 17, 255]),
    "PixelRepresentation": ("US", [2, 255]),
    "SamplesPerPixel": ("US", [0, 3, 255]),
    "NumberOfFrames": ("IS", ["0", "-1", "1000000", "2147483647", "abc"]),
    "PhotometricInterpretation": ("CS", ["PALETTE COLOR", "RGB"]),
}
HEADER_MUTANTS = [(k, vr, v) for k, (vr, values) in HEADER_DAMAGE.items() for v in values]

# NIfTI-1 header fields: name -> (struct format, byte offset)
NIFTI_FIELDS = {
    "dim0": ("h", 40),
    "dim1": ("h", 42),
    "dim3": ("h", 46),
    "dim4": ("h", 48),
    "datatype": ("h", 70),
    "bitpix": ("h", 72),
    "pixdim1": ("f", 80),
    "pixdim3": ("f", 88),
    "vox_offset": ("f", 108),
    "scl_slope": ("f", 112),
    "scl_inter": ("f", 116),
    "qform_code": ("h", 252),
    "sform_code": ("h", 254),
    "quatern_b": ("f", 256),
    "srow_x0": ("f", 280),
    "srow_y1": ("f", 300),
    "srow_z3": ("f", 324),
}
SHORTS = st.sampled_from([0, -1, 1, 7, 255, 32767, -32768])
FLOATS = st.sampled_from([0.0, -1.0, float("nan"), float("inf"), -float("inf"), 1e38, 2.0])


def assert_contract(path: Path) -> None:
    """A documented error, or volumes that can be placed in space and hold finite values (or
    say which are not: NaN in a float NIfTI is the file's content, reported)."""
    try:
        if path.is_dir():
            list_series(path)
        result = load_scans(path)
    except ScanClassifierError:
        return
    assert isinstance(result, LoadResult)
    for volume in result.volumes:
        affine = np.asarray(volume.affine)
        assert np.all(np.isfinite(affine))
        lengths = np.linalg.norm(affine[:3, :3], axis=0)
        assert abs(np.linalg.det(affine[:3, :3])) > 1e-6 * np.prod(lengths) > 0
        assert volume.voxels.size > 0
        if volume.voxels.dtype.kind == "f" and not np.all(np.isfinite(volume.voxels)):
            assert any("NaN" in note for note in volume.metadata["geometry_warnings"])


def series(folder: Path, syntax=ExplicitVRLittleEndian) -> list:
    uids = SeriesUIDs()
    datasets = []
    for k, position in enumerate(stack_positions(3, (0.0, 0.0, 2.5))):
        ds = slice_dataset(
            slice_pixels(k),
            position=position,
            orientation=AXIAL,
            pixel_spacing=(0.8, 0.6),
            uids=uids,
            instance_number=k + 1,
            rescale=(1.0, -1024.0),
        )
        if syntax == RLELossless:
            ds.compress(syntax, generate_instance_uid=False)
        datasets.append(ds)
    return datasets


def write_all(datasets: list, folder: Path) -> list[Path]:
    paths = [folder / f"{k}.dcm" for k in range(len(datasets))]
    for ds, path in zip(datasets, paths, strict=True):
        dcmwrite(path, ds, enforce_file_format=True)
    return paths


@FUZZ
@given(
    mutant=st.sampled_from(HEADER_MUTANTS),
    every_slice=st.booleans(),
    syntax=st.sampled_from([ExplicitVRLittleEndian, RLELossless]),
)
def test_damaged_dicom_headers_keep_the_contract(mutant, every_slice, syntax):
    keyword, vr, value = mutant
    with tempfile.TemporaryDirectory() as tmp:
        datasets = series(Path(tmp), syntax)
        for ds in datasets if every_slice else datasets[-1:]:
            raw = struct.pack("<H", value) if vr == "US" else str(value).encode()
            raw += b" " * (len(raw) % 2)
            tag = Tag(keyword)
            ds._dict[tag] = RawDataElement(tag, vr, len(raw), raw, 0, False, True)
        write_all(datasets, Path(tmp))
        assert_contract(Path(tmp))


@FUZZ
@given(
    cut=st.floats(0.0, 1.0),
    noise=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=16),
    syntax=st.sampled_from([ExplicitVRLittleEndian, RLELossless]),
)
def test_damaged_dicom_pixel_data_keeps_the_contract(cut, noise, syntax):
    with tempfile.TemporaryDirectory() as tmp:
        datasets = series(Path(tmp), syntax)
        paths = write_all(datasets, Path(tmp))
        data = bytearray(paths[1].read_bytes())
        start = data.rfind(b"\xe0\x7f\x10\x00")  # the Pixel Data element
        for where, byte in noise:
            data[start + int(where * (len(data) - start - 1))] = byte
        paths[1].write_bytes(bytes(data[: start + int(cut * (len(data) - start))]))
        assert_contract(Path(tmp))


ENHANCED_DAMAGE = [
    ("PlanePositionSequence", "ImagePositionPatient", "DS", "nan\\0\\0"),
    ("PlanePositionSequence", "ImagePositionPatient", "DS", "1e300\\0\\0"),
    ("PlaneOrientationSequence", "ImageOrientationPatient", "DS", "1\\0\\0\\1\\0\\0"),
    ("PlaneOrientationSequence", "ImageOrientationPatient", "DS", "nan\\0\\0\\0\\1\\0"),
    ("PixelValueTransformationSequence", "RescaleSlope", "DS", "0"),
    ("PixelValueTransformationSequence", "RescaleSlope", "DS", "nan"),
    ("PixelValueTransformationSequence", "RescaleIntercept", "DS", "inf"),
]


@FUZZ
@given(
    damage=st.sampled_from(ENHANCED_DAMAGE),
    frame=st.integers(0, 3),
    frames_declared=st.sampled_from([None, 3, 5, 100_000]),
)
def test_damaged_enhanced_functional_groups_keep_the_contract(damage, frame, frames_declared):
    sequence, keyword, vr, value = damage
    positions = stack_positions(4, (0.0, 0.0, 2.5))
    pixels = np.stack([slice_pixels(k) for k in range(4)])
    ds = enhanced_dataset(pixels, positions, [AXIAL] * 4, [(1.0, -1024.0)] * 4)
    item = ds.PerFrameFunctionalGroupsSequence[frame][sequence][0]
    raw = value.encode() + b" " * (len(value) % 2)
    item._dict[Tag(keyword)] = RawDataElement(Tag(keyword), vr, len(raw), raw, 0, False, True)
    if frames_declared is not None:
        ds.NumberOfFrames = frames_declared
    with tempfile.TemporaryDirectory() as tmp:
        dcmwrite(Path(tmp) / "enhanced.dcm", ds, enforce_file_format=True)
        assert_contract(Path(tmp))


def nifti_bytes(four_d: bool, dtype: str) -> bytearray:
    shape = (8, 7, 6, 3) if four_d else (8, 7, 6)
    voxels = np.arange(np.prod(shape)).reshape(shape).astype(dtype)
    affine = np.diag([0.9, 0.8, 2.5, 1.0])
    image = nib.Nifti1Image(voxels, affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    return bytearray(image.to_bytes())


@FUZZ
@given(
    changes=st.lists(
        st.sampled_from(sorted(NIFTI_FIELDS)).flatmap(
            lambda name: st.tuples(
                st.just(name), SHORTS if NIFTI_FIELDS[name][0] == "h" else FLOATS
            )
        ),
        min_size=1,
        max_size=3,
    ),
    four_d=st.booleans(),
    dtype=st.sampled_from(["int16", "float32", "uint8"]),
    gz=st.booleans(),
)
def test_damaged_nifti_headers_keep_the_contract(changes, four_d, dtype, gz):
    data = nifti_bytes(four_d, dtype)
    for name, value in changes:
        fmt, offset = NIFTI_FIELDS[name]
        struct.pack_into(f"<{fmt}", data, offset, value)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("scan.nii.gz" if gz else "scan.nii")
        path.write_bytes(gzip.compress(bytes(data)) if gz else bytes(data))
        assert_contract(path)


@FUZZ
@given(
    cut=st.floats(0.0, 1.0),
    noise=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=8),
    gz=st.booleans(),
)
def test_damaged_nifti_bytes_keep_the_contract(cut, noise, gz):
    raw = bytes(nifti_bytes(False, "float32"))
    data = bytearray(gzip.compress(raw) if gz else raw)
    for where, byte in noise:
        data[int(where * (len(data) - 1))] = byte
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("scan.nii.gz" if gz else "scan.nii")
        path.write_bytes(bytes(data[: max(1, int(cut * len(data)))]))
        assert_contract(path)
