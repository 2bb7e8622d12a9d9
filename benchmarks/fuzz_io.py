"""Seeded fuzzing of the DICOM and NIfTI readers: how each kind of damaged input ends.

Writes N mutants per category (small generated series and NIfTI files with one header field,
pixel data or byte range damaged), loads each through the public API in a worker process
(``list_series`` then ``load_scans``) and tallies the outcomes:

- clean: a documented error (the package's error family) or volumes with finite, non-singular
  affines, every dimension non-empty and finite voxels (NaN voxels, and damage that must be
  noticed, only with a warning or a skipped file saying so);
- uncaught: any other exception;
- hang: no answer within ``--timeout`` seconds;
- crash: the worker process died (segfault, killed for memory, ...);
- silent-wrong: a volume came back that breaks the contract above.

The worker's address space is capped (``--memory-gib``), so an attempt to allocate terabytes
shows up as an uncaught MemoryError instead of swapping the machine.

    python benchmarks/fuzz_io.py [--n 60] [--seed 0] [--timeout 20] [--category ...]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import select
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom import config as pydicom_config
from pydicom import dcmwrite
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    RLELossless,
)

from napari_scan_classifier.io.dicom_write import SeriesUIDs, save_dataset, slice_dataset

OUTCOMES = ("clean", "uncaught", "hang", "crash", "silent-wrong")

# (keyword, VR, bad values) for header mutations; a value of None deletes the element.
HEADER_VALUES: list[tuple[str, str, list]] = [
    ("PixelSpacing", "DS", ["0\\0", "nan\\nan", "inf\\1", "-0.8\\-0.6", "1e308\\1", "", "x\\y"]),
    ("ImagePositionPatient", "DS", ["nan\\0\\0", "inf\\0\\0", "1e300\\0\\0", "", "a\\b\\c"]),
    (
        "ImageOrientationPatient",
        "DS",
        ["1\\0\\0\\1\\0\\0", "0\\0\\0\\0\\0\\0", "nan\\0\\0\\0\\1\\0", "1\\0\\0\\0\\2\\0"],
    ),
    ("RescaleSlope", "DS", ["0", "nan", "inf", "-1e308", "1e308"]),
    ("RescaleIntercept", "DS", ["nan", "inf", "1e308"]),
    ("SliceThickness", "DS", ["0", "-5", "nan"]),
    ("Rows", "US", [0, 1, 65535]),
    ("Columns", "US", [0, 1, 65535]),
    ("BitsAllocated", "US", [0, 1, 7, 12, 24, 64, 255]),
    ("BitsStored", "US", [0, 17, 255]),
    ("PixelRepresentation", "US", [2, 255]),
    ("SamplesPerPixel", "US", [0, 3, 255]),
    ("NumberOfFrames", "IS", ["0", "-1", "1000000", "2147483647", "abc"]),
    ("InstanceNumber", "IS", ["nan", "99999999999"]),
    ("PhotometricInterpretation", "CS", ["PALETTE COLOR", "RGB", "YBR_FULL"]),
]

SYNTAXES = [
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    RLELossless,
    DeflatedExplicitVRLittleEndian,
]

# Damage that must not load silently: a volume is only acceptable with a warning or a skip.
MUST_NOTICE = {("RescaleSlope", "0"), ("PixelSpacing", "-0.8\\-0.6")}

# NIfTI-1 header fields: (name, struct format, byte offset).
NIFTI_FIELDS = [
    ("dim0", "h", 40),
    ("dim1", "h", 42),
    ("dim2", "h", 44),
    ("dim3", "h", 46),
    ("dim4", "h", 48),
    ("datatype", "h", 70),
    ("bitpix", "h", 72),
    ("pixdim1", "f", 80),
    ("pixdim3", "f", 88),
    ("vox_offset", "f", 108),
    ("scl_slope", "f", 112),
    ("scl_inter", "f", 116),
    ("qform_code", "h", 252),
    ("sform_code", "h", 254),
    ("quatern_b", "f", 256),
    ("qoffset_x", "f", 268),
    ("srow_x0", "f", 280),
    ("srow_y1", "f", 300),
    ("srow_z2", "f", 320),
    ("srow_z3", "f", 324),
]
NIFTI_VALUES = {
    "h": [0, -1, 1, 7, 255, 32767, -32768],
    "f": [0.0, -1.0, float("nan"), float("inf"), -float("inf"), 1e38, 1e-38, 2.0],
}


# ----------------------------------------------------------------------------- inputs


def _series_datasets(rng: random.Random, slices: int = 4) -> list:
    uids = SeriesUIDs()
    values = np.random.default_rng(rng.randrange(2**32))
    return [
        slice_dataset(
            values.integers(-100, 1000, size=(12, 10), dtype=np.int16),
            position=(-40.0, -30.0, 12.5 + 2.5 * k),
            orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
            pixel_spacing=(0.8, 0.6),
            uids=uids,
            instance_number=k + 1,
            rescale=(1.0, -1024.0),
            slice_thickness=2.5,
        )
        for k in range(slices)
    ]


def _set_raw(ds, keyword: str, vr: str, value, little: bool) -> None:
    """Store ``value`` as the element's encoded bytes, so pydicom neither checks nor fixes it."""
    data = struct.pack("<H" if little else ">H", value) if vr == "US" else str(value).encode()
    data += b" " * (len(data) % 2)
    tag = Tag(keyword)
    ds._dict[tag] = RawDataElement(tag, vr, len(data), data, 0, False, little)


def _encode(ds, syntax: UID) -> None:
    """Put the pixel data in ``syntax`` before the header is damaged (encoders check it)."""
    if syntax == RLELossless:
        ds.compress(syntax, generate_instance_uid=False)
        return
    if syntax == ExplicitVRBigEndian:
        ds.PixelData = np.frombuffer(ds.PixelData, "<i2").byteswap().tobytes()
    ds.file_meta.TransferSyntaxUID = syntax


def dicom_header(rng: random.Random, folder: Path) -> str:
    datasets = _series_datasets(rng)
    keyword, vr, values = rng.choice(HEADER_VALUES)
    value = rng.choice(values)
    syntax = UID(rng.choice(SYNTAXES))
    targets = datasets if rng.random() < 0.5 else [rng.choice(datasets)]
    for k, ds in enumerate(datasets):
        _encode(ds, syntax)
        if any(ds is target for target in targets):
            _set_raw(ds, keyword, vr, value, syntax.is_little_endian)
        dcmwrite(folder / f"{k}.dcm", ds, little_endian=syntax.is_little_endian, implicit_vr=False)
    scope = "all" if len(targets) > 1 else "one"
    notice = "!" if (keyword, value) in MUST_NOTICE else ""
    return f"{notice}{keyword}={value!r} ({scope}, {syntax.name})"


def dicom_pixels(rng: random.Random, folder: Path) -> str:
    datasets = _series_datasets(rng)
    syntax = rng.choice([ExplicitVRLittleEndian, RLELossless, DeflatedExplicitVRLittleEndian])
    how = rng.choice(["truncate", "random", "empty", "syntax"])
    victim = rng.choice(datasets)
    for ds in datasets:
        if ds is not victim:
            save_dataset(ds, folder, syntax)
            continue
        compressed = syntax == RLELossless
        if compressed:
            ds.compress(syntax, generate_instance_uid=False)
            (fragment,) = generate_frames(ds.PixelData, number_of_frames=1)
        data = bytearray(fragment if compressed else ds.PixelData)
        if how == "truncate":
            data = data[: rng.randrange(len(data))]
        elif how == "random":
            for _ in range(rng.randint(1, 16)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif how == "empty":
            data = bytearray()
        ds.PixelData = _encapsulated(bytes(data)) if compressed else bytes(data)
        if how == "syntax":
            ds.file_meta.TransferSyntaxUID = rng.choice(
                ["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.5"]
            )
        if not compressed:
            save_dataset(ds, folder, syntax)
        else:  # already compressed: written as it is
            dcmwrite(folder / "victim.dcm", ds, enforce_file_format=True)
    return f"{how} {syntax.name}"


def _encapsulated(fragment: bytes) -> bytes:
    """One fragment as encapsulated Pixel Data, any length (pydicom refuses an empty one)."""
    fragment += b"\0" * (len(fragment) % 2)
    item = b"\xfe\xff\x00\xe0"
    end = b"\xfe\xff\xdd\xe0\0\0\0\0"
    return item + b"\0" * 4 + item + struct.pack("<I", len(fragment)) + fragment + end


def _enhanced_dataset(rng: random.Random, uids: SeriesUIDs, time: int) -> Dataset:
    """An Enhanced CT file of 4 frames, geometry and rescale in its functional groups."""
    values = np.random.default_rng(rng.randrange(2**32))
    frames = values.integers(-100, 1000, size=(4, 12, 10), dtype=np.int16)
    ds = slice_dataset(
        frames[0],
        position=(0, 0, 0),
        orientation=(1, 0, 0, 0, 1, 0),
        pixel_spacing=(0.8, 0.6),
        uids=uids,
        instance_number=time,
    )
    ds.set_pixel_data(frames, "MONOCHROME2", 16)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        delattr(ds, keyword)
    measures, orientation, shared = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = [0.8, 0.6], 2.5
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [measures], [orientation]
    ds.SharedFunctionalGroupsSequence = [shared]
    items = []
    for k in range(4):
        plane, content, rescale, item = Dataset(), Dataset(), Dataset(), Dataset()
        plane.ImagePositionPatient = [-40.0, -30.0, 12.5 + 2.5 * k]
        content.TemporalPositionIndex = time
        rescale.RescaleSlope, rescale.RescaleIntercept = 1, -1024
        item.PlanePositionSequence, item.FrameContentSequence = [plane], [content]
        item.PixelValueTransformationSequence = [rescale]
        items.append(item)
    ds.PerFrameFunctionalGroupsSequence = items
    return ds


ENHANCED_VALUES: list[tuple[str, str, str, list]] = [
    ("frame", "ImagePositionPatient", "DS", ["nan\\0\\0", "1e300\\0\\0", "", "0\\0"]),
    (
        "shared-orientation",
        "ImageOrientationPatient",
        "DS",
        ["1\\0\\0\\1\\0\\0", "nan\\0\\0\\0\\1\\0"],
    ),
    ("shared-measures", "PixelSpacing", "DS", ["0\\0", "-1\\-1", "inf\\1"]),
    ("frame-rescale", "RescaleSlope", "DS", ["0", "nan", "1e308"]),
    ("frame-content", "TemporalPositionIndex", "UL", [0, 3, 4294967295]),
    ("top", "NumberOfFrames", "IS", ["3", "5", "100000", "0"]),
]


def dicom_enhanced(rng: random.Random, folder: Path) -> str:
    uids = SeriesUIDs()
    datasets = [_enhanced_dataset(rng, uids, t) for t in (1, 2)]
    where, keyword, vr, values = rng.choice(ENHANCED_VALUES)
    value = rng.choice(values)
    ds = rng.choice(datasets)
    frame = rng.randrange(4)
    target = {
        "frame": lambda: ds.PerFrameFunctionalGroupsSequence[frame].PlanePositionSequence[0],
        "shared-orientation": lambda: ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[
            0
        ],
        "shared-measures": lambda: ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0],
        "frame-rescale": lambda: ds.PerFrameFunctionalGroupsSequence[
            frame
        ].PixelValueTransformationSequence[0],
        "frame-content": lambda: ds.PerFrameFunctionalGroupsSequence[frame].FrameContentSequence[0],
        "top": lambda: ds,
    }[where]()
    if isinstance(value, int):  # a valid binary value, but one that breaks the order
        setattr(target, keyword, value)
    else:
        _set_raw(target, keyword, vr, value, True)
    for k, dataset in enumerate(datasets):
        dcmwrite(folder / f"{k}.dcm", dataset, enforce_file_format=True)
    return f"{where} {keyword}={value!r}"


def _damage_bytes(rng: random.Random, data: bytes, start: int) -> tuple[bytes, str]:
    data = bytearray(data)
    how = rng.choice(["flip", "truncate", "insert"])
    if how == "flip":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(start, len(data))] = rng.randrange(256)
    elif how == "truncate":
        del data[rng.randrange(start, len(data)) :]
    else:
        at = rng.randrange(start, len(data))
        data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    return bytes(data), how


def dicom_bytes(rng: random.Random, folder: Path) -> str:
    paths = [save_dataset(ds, folder) for ds in _series_datasets(rng)]
    victim = rng.choice(paths)
    data, how = _damage_bytes(rng, victim.read_bytes(), 132)
    victim.write_bytes(data)
    return how


def _nifti_bytes(rng: random.Random) -> bytes:
    shape = (8, 7, 6) if rng.random() < 0.7 else (8, 7, 6, 3)
    dtype = rng.choice([np.int16, np.float32, np.uint8])
    voxels = np.random.default_rng(rng.randrange(2**32)).integers(0, 100, shape).astype(dtype)
    affine = np.diag([0.9, 0.8, 2.5, 1.0])
    affine[:3, 3] = (-10, 20, 5)
    image = nib.Nifti1Image(voxels, affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    return image.to_bytes()


def nifti_header(rng: random.Random, folder: Path) -> str:
    data = bytearray(_nifti_bytes(rng))
    name, fmt, offset = rng.choice(NIFTI_FIELDS)
    value = rng.choice(NIFTI_VALUES[fmt])
    struct.pack_into(f"<{fmt}", data, offset, value)
    gz = rng.random() < 0.3
    path = folder / ("scan.nii.gz" if gz else "scan.nii")
    path.write_bytes(gzip.compress(bytes(data)) if gz else bytes(data))
    return f"{name}={value}"


def nifti_bytes(rng: random.Random, folder: Path) -> str:
    gz = rng.random() < 0.5
    raw = _nifti_bytes(rng)
    data = gzip.compress(raw) if gz else raw
    damaged, how = _damage_bytes(rng, data, 0)
    (folder / ("scan.nii.gz" if gz else "scan.nii")).write_bytes(damaged)
    return f"{how} {'gz' if gz else 'raw'}"


CATEGORIES: dict[str, Callable[[random.Random, Path], str]] = {
    "dicom-header": dicom_header,
    "dicom-pixels": dicom_pixels,
    "dicom-bytes": dicom_bytes,
    "dicom-enhanced": dicom_enhanced,
    "nifti-header": nifti_header,
    "nifti-bytes": nifti_bytes,
}


# ----------------------------------------------------------------------------- worker


def _check_volume(volume, notice: bool, noticed: bool) -> str | None:
    """Why a loaded volume breaks the contract, or None."""
    affine = np.asarray(volume.affine, float)
    if not np.all(np.isfinite(affine)):
        return "non-finite affine"
    columns = affine[:3, :3]
    scale = np.prod(np.linalg.norm(columns, axis=0))
    if scale == 0 or abs(np.linalg.det(columns)) < 1e-6 * scale:
        return "singular affine"
    voxels = np.asarray(volume.voxels)
    if voxels.size == 0 or 0 in voxels.shape:
        return "empty volume"
    if voxels.dtype.kind == "f" and not np.all(np.isfinite(voxels)) and not noticed:
        return "non-finite voxels"
    if notice and not noticed:
        return "damage not reported"
    return None


def _evaluate(path: Path, notice: bool) -> tuple[str, str]:
    from napari_scan_classifier.errors import ScanClassifierError
    from napari_scan_classifier.io import load_scans

    try:
        if path.is_dir():
            from napari_scan_classifier.io.dicom import list_series

            list_series(path)
        result = load_scans(path)
    except ScanClassifierError as error:
        return "clean", f"refused: {type(error).__name__}"
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # the outcome measured (Rust decoders panic as BaseException)
        return "uncaught", f"{type(error).__name__}: {str(error)[:80]}"
    noticed = bool(result.skipped) or any(
        v.metadata.get("geometry_warnings") or v.metadata.get("warnings") for v in result.volumes
    )
    for volume in result.volumes:
        problem = _check_volume(volume, notice, noticed)
        if problem:
            return "silent-wrong", problem
    return "clean", "loaded"


def worker(memory_gib: float) -> None:
    """Answer one JSON line per input path read from stdin."""
    limit = int(memory_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for line in sys.stdin:
        task = json.loads(line)
        outcome, detail = _evaluate(Path(task["path"]), task["notice"])
        print(json.dumps({"outcome": outcome, "detail": detail}), flush=True)


class Worker:
    """A worker process that is restarted after a hang or a crash."""

    def __init__(self, memory_gib: float) -> None:
        self.memory_gib = memory_gib
        self.process: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        command = [sys.executable, __file__, "--worker", "--memory-gib", str(self.memory_gib)]
        return subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )

    def run(self, path: Path, notice: bool, timeout: float) -> tuple[str, str]:
        if self.process is None or self.process.poll() is not None:
            self.process = self._start()
        self.process.stdin.write(json.dumps({"path": str(path), "notice": notice}) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            self.stop()
            return "hang", f"no answer in {timeout:g} s"
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            self.process = None
            return "crash", f"worker exited with {code}"
        answer = json.loads(line)
        return answer["outcome"], answer["detail"]

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60, help="mutants per category")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--memory-gib", type=float, default=4.0)
    parser.add_argument("--category", action="append", choices=sorted(CATEGORIES))
    parser.add_argument("--verbose", action="store_true", help="print every non-clean mutant")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.memory_gib)
        return
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    tally: dict[str, Counter] = {}
    runner = Worker(args.memory_gib)
    start = time.perf_counter()
    try:
        for category in args.category or list(CATEGORIES):
            rng = random.Random(f"{args.seed}-{category}")
            tally[category] = Counter()
            for index in range(args.n):
                with tempfile.TemporaryDirectory() as tmp:
                    folder = Path(tmp) / "input"
                    folder.mkdir()
                    label = CATEGORIES[category](rng, folder)
                    target = folder if category.startswith("dicom") else next(folder.iterdir())
                    outcome, detail = runner.run(target, label.startswith("!"), args.timeout)
                tally[category][outcome] += 1
                if args.verbose and outcome != "clean":
                    print(f"{category} #{index} {label}: {outcome} ({detail})", flush=True)
    finally:
        runner.stop()
    print_table(tally)
    print(
        f"{sum(sum(c.values()) for c in tally.values())} mutants in "
        f"{time.perf_counter() - start:.0f} s"
    )


def print_table(tally: dict[str, Counter]) -> None:
    width = max(len(c) for c in [*tally, "category"]) + 2
    print("| " + " | ".join(["category".ljust(width), "tried", *OUTCOMES]) + " |")
    print(
        "|"
        + "|".join(["-" * (width + 2), "-------", *("-" * (len(o) + 2) for o in OUTCOMES)])
        + "|"
    )
    for category, counts in [*tally.items(), ("total", sum(tally.values(), Counter()))]:
        cells = [str(counts[o]).rjust(len(o)) for o in OUTCOMES]
        print(
            f"| {category.ljust(width)} | {sum(counts.values()):5d} | " + " | ".join(cells) + " |"
        )


if __name__ == "__main__":
    main()
