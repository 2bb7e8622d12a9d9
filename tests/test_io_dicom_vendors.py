"""DICOM variants met on real scanners, generated: time order, vendor mosaics and polarity,
instance UIDs shared between files, byte order, lookup tables and gzipped files."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
from dicom_helpers import (
    AXIAL,
    assert_slices_in_place,
    enhanced_dataset,
    file_positions,
    slice_pixels,
    stack_positions,
    write_stack,
)
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian

from napari_scan_classifier.io.dicom import list_series, load_dicom
from napari_scan_classifier.io.dicom_write import SeriesUIDs, slice_dataset
from napari_scan_classifier.volume import Volume

SPACING = (0.8, 0.6)


def timepoint(volume: Volume, t: int) -> Volume:
    return Volume(volume.voxels[t], volume.affine, volume.modality)


def ct_slice(pixels: np.ndarray, position, uids: SeriesUIDs, **fields) -> Dataset:
    return slice_dataset(
        pixels, position=position, orientation=AXIAL, pixel_spacing=SPACING, uids=uids, **fields
    )


# ----------------------------------------------------------------------------- time order


def test_enhanced_time_points_follow_temporal_position_index_not_file_names(tmp_path):
    """TemporalPositionIndex is binary (VR UL): read as text it was 0 and file names decided."""
    positions = stack_positions(3, (0.0, 0.0, 2.0))
    uids = SeriesUIDs()
    for t, name in ((1, "z_first.dcm"), (2, "m_second.dcm"), (3, "a_third.dcm")):
        frames = np.stack([slice_pixels(10 * t + k) for k in range(3)])
        ds = enhanced_dataset(frames, positions, [AXIAL] * 3, [(1.0, 0.0)] * 3)
        ds.SeriesInstanceUID = uids.series
        for item in ds.PerFrameFunctionalGroupsSequence:
            content = Dataset()
            content.TemporalPositionIndex = t  # written as binary UL
            item.FrameContentSequence = [content]
        ds.save_as(tmp_path / name, enforce_file_format=True)
    content = dcmread(tmp_path / "a_third.dcm").PerFrameFunctionalGroupsSequence[0]
    assert content.FrameContentSequence[0]["TemporalPositionIndex"].VR == "UL"

    volume = load_dicom(tmp_path).volumes[0]

    assert volume.voxels.shape == (3, 3, 12, 10)
    for t in range(3):
        expected = [slice_pixels(10 * (t + 1) + k) for k in range(3)]
        assert_slices_in_place(timepoint(volume, t), positions, expected)


def test_single_frame_time_points_follow_acquisition_time_not_file_names(tmp_path):
    positions = stack_positions(2, (0.0, 0.0, 3.0))
    uids = SeriesUIDs()
    for t, (stamp, prefix) in enumerate((("101500.0", "z"), ("101502.5", "a"))):
        for k, position in enumerate(positions):
            ds = ct_slice(slice_pixels(10 * t + k), position, uids, instance_number=1)
            ds.AcquisitionDate, ds.AcquisitionTime = "20240101", stamp
            dcmwrite(tmp_path / f"{prefix}{k}.dcm", ds, enforce_file_format=True)

    volume = load_dicom(tmp_path).volumes[0]

    assert volume.metadata["frame_axis"] == "time"
    for t in range(2):
        assert_slices_in_place(
            timepoint(volume, t), positions, [slice_pixels(10 * t + k) for k in range(2)]
        )


def test_two_files_at_one_position_keep_the_first_in_acquisition_order(tmp_path):
    """Which one is kept does not depend on the file names; the warning names the other by
    instance number and position, never by file name."""
    positions = stack_positions(3, (0.0, 0.0, 2.0))
    outcomes = []
    for name in ("0.dcm", "zz.dcm"):  # the extra file read first, then last
        folder = tmp_path / name
        uids = SeriesUIDs()
        write_stack(folder, positions, uids=uids)
        extra = ct_slice(np.full((12, 10), 900, np.int16), positions[1], uids, instance_number=9)
        dcmwrite(folder / name, extra, enforce_file_format=True)
        volume = load_dicom(folder).volumes[0]
        outcomes.append((volume.voxels.copy(), volume.metadata["geometry_warnings"]))

    (first, notes), (second, notes_again) = outcomes
    np.testing.assert_array_equal(first, second)
    assert (
        notes
        == notes_again
        == [
            "1 repeated slice(s) at one position left out (instance 9 at 14.50 mm along the slice "
            "normal; the first in acquisition order is kept)"
        ]
    )
    np.testing.assert_array_equal(first, np.stack([slice_pixels(k) for k in range(3)]))


# ----------------------------------------------------------------------------- vendor formats


def uih_grid(tmp_path: Path, t: int, uids: SeriesUIDs, tiles: list[np.ndarray], positions) -> None:
    """One UIH grid mosaic: 5 tiles of 6x5 pixels in a 2x3 grid (12x15 pixels)."""
    mosaic = np.zeros((12, 15), np.int16)
    for k, tile in enumerate(tiles):
        mosaic[(k // 3) * 6 : (k // 3) * 6 + 6, (k % 3) * 5 : (k % 3) * 5 + 5] = tile
    ds = ct_slice(mosaic, positions[0], uids, modality="MR", instance_number=t + 1)
    del ds.ImagePositionPatient  # UIH grids give a position per tile only
    ds.Manufacturer, ds.ImageType = "UIH", ["ORIGINAL", "PRIMARY", "M", "VFRAME"]
    block = ds.private_block(0x0065, "Image Private Header", create=True)
    block.add_new(0x04, "SH", "6*5")
    items = []
    for k, position in enumerate(positions):
        item = Dataset()
        item.ImagePositionPatient = [float(v) for v in position]
        item.AcquisitionTime = f"1200{t:02d}.{k:03d}"
        items.append(item)
    block.add_new(0x51, "SQ", items)
    dcmwrite(tmp_path / f"{9 - t}.dcm", ds, enforce_file_format=True)


def test_united_imaging_grid_mosaic_tiles_are_slices_at_their_own_positions(tmp_path):
    positions = stack_positions(5, (0.3, -0.2, 4.0))
    uids = SeriesUIDs()
    tiles = {t: [slice_pixels(10 * t + k, 6, 5) for k in range(5)] for t in range(2)}
    for t in range(2):
        uih_grid(tmp_path, t, uids, tiles[t], positions)

    (info,) = list_series(tmp_path)
    volume = load_dicom(tmp_path).volumes[0]

    assert (info.shape, info.timepoints) == ((5, 6, 5), 2)
    assert volume.voxels.shape == (2, 5, 6, 5)
    for t in range(2):
        assert_slices_in_place(timepoint(volume, t), positions, tiles[t])


def ge_pepolar_series(folder: Path) -> list[np.ndarray]:
    """Four time points of 3 slices; user data 12 = 2: odd time points are reverse-encoded."""
    positions = stack_positions(3, (0.0, 0.0, 3.0))
    uids = SeriesUIDs()
    planes = []
    for t in range(1, 5):
        for k, position in enumerate(positions):
            pixels = slice_pixels(10 * t + k)
            planes.append(pixels)
            ds = ct_slice(pixels, position, uids, modality="MR", series_number=6)
            ds.Manufacturer = "GE MEDICAL SYSTEMS"
            ds.TemporalPositionIdentifier, ds.InstanceNumber = t, 3 * (t - 1) + k + 1
            block = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
            block.add_new(0x9C, "LO", "research/ABCD/epi_pepolar")
            block.add_new(0xB3, "DS", "2.000000")
            dcmwrite(folder / f"{t}_{k}.dcm", ds, enforce_file_format=True)
    return positions


def test_ge_reverse_phase_encoding_volumes_are_flipped_and_split_as_dcm2niix(tmp_path):
    positions = ge_pepolar_series(tmp_path)

    forward, reverse = load_dicom(tmp_path).volumes

    assert (forward.metadata["series_number"], reverse.metadata["series_number"]) == (6, 1006)
    assert forward.voxels.shape == reverse.voxels.shape == (2, 3, 12, 10)
    for t, number in enumerate((2, 4)):
        assert_slices_in_place(
            timepoint(forward, t), positions, [slice_pixels(10 * number + k) for k in range(3)]
        )
    for t, number in enumerate((1, 3)):
        flipped = [slice_pixels(10 * number + k)[::-1] for k in range(3)]
        assert_slices_in_place(timepoint(reverse, t), positions, flipped)
    assert forward.metadata["geometry_warnings"] == []
    assert reverse.metadata["geometry_warnings"] == [
        "GE reverse phase-encoding volumes: flipped along the phase-encoding (row) axis as "
        "dcm2niix does, and kept apart from the forward ones"
    ]


# ----------------------------------------------------------------------------- shared UIDs


def test_series_sharing_instance_uids_are_all_loaded(tmp_path):
    positions = stack_positions(3, (0.0, 0.0, 2.0))
    shared = [f"1.2.826.0.1.3680043.8.498.{k + 1}" for k in range(3)]
    for n in range(3):
        uids = SeriesUIDs()
        for k, position in enumerate(positions):
            ds = ct_slice(slice_pixels(10 * n + k), position, uids, series_number=n + 1)
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = shared[k]
            dcmwrite(tmp_path / f"{n}_{k}.dcm", ds, enforce_file_format=True)

    result = load_dicom(tmp_path)

    assert result.skipped == []
    assert [v.metadata["series_number"] for v in result.volumes] == [1, 2, 3]
    for n, volume in enumerate(result.volumes):
        assert_slices_in_place(volume, positions, [slice_pixels(10 * n + k) for k in range(3)])


def test_same_instance_uids_with_other_content_load_as_a_volume_of_their_own(tmp_path):
    positions = stack_positions(3, (0.0, 0.0, 2.0))
    uids = SeriesUIDs()
    for variant, offset in (("a", 0), ("b", 500)):
        for k, position in enumerate(positions):
            ds = ct_slice(slice_pixels(k) + offset, position, uids)
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.3.{k + 1}"
            dcmwrite(tmp_path / f"{variant}{k}.dcm", ds, enforce_file_format=True)

    result = load_dicom(tmp_path)

    assert result.skipped == []
    first, second = result.volumes
    assert first.metadata["series_key"] != second.metadata["series_key"]
    values = sorted([first.voxels.min(), second.voxels.min()])
    assert values == [0, 500]
    assert second.metadata["geometry_warnings"] == [
        "these files repeat the instance UIDs of another volume of this series with other "
        "content (another encoding or other pixels): loaded as a volume of their own"
    ]


# ----------------------------------------------------------------------------- byte order, LUTs


def test_8_bit_pixels_in_big_endian_words_are_swapped_back(tmp_path):
    """Explicit VR Big Endian stores 8-bit OW pixel data as 16-bit words: bytes come in pairs."""
    pixels = (np.arange(12 * 10) % 251).reshape(12, 10).astype(np.uint8)
    ds = ct_slice(pixels, (0.0, 0.0, 0.0), SeriesUIDs(), rescale=(1.0, 0.0))
    ds.PixelData = pixels.reshape(-1, 2)[:, ::-1].tobytes()  # each word big-endian
    ds["PixelData"].VR = "OW"
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    dcmwrite(tmp_path / "be.dcm", ds, little_endian=False, implicit_vr=False)

    volume = load_dicom(tmp_path).volumes[0]

    np.testing.assert_array_equal(volume.voxels[0], pixels)
    np.testing.assert_array_equal(volume.voxels[0], dcmread(tmp_path / "be.dcm").pixel_array)


def palette_slice(folder: Path, red: np.ndarray, green: np.ndarray, blue: np.ndarray) -> np.ndarray:
    stored = (np.arange(12 * 10) % 256).reshape(12, 10).astype(np.uint8)
    ds = ct_slice(stored, (0.0, 0.0, 0.0), SeriesUIDs(), modality="MR")
    ds.PhotometricInterpretation = "PALETTE COLOR"
    for colour, table in (("Red", red), ("Green", green), ("Blue", blue)):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", table.astype("<u2").tobytes())
    dcmwrite(folder / "palette.dcm", ds, enforce_file_format=True)
    return stored


def test_grey_palette_is_applied(tmp_path):
    grey = 1000 + 3 * np.arange(256)
    stored = palette_slice(tmp_path, grey, grey, grey)

    volume = load_dicom(tmp_path).volumes[0]

    np.testing.assert_array_equal(volume.voxels[0], grey[stored])


def test_colour_palette_is_refused_with_its_reason(tmp_path):
    ramp = np.arange(256)
    palette_slice(tmp_path, ramp, ramp[::-1], ramp)

    with pytest.raises(Exception, match="palette colour \\(RGB\\) images are not supported"):
        load_dicom(tmp_path)


def test_modality_lut_sequence_replaces_the_rescale(tmp_path):
    stored = (np.arange(12 * 10) * 30 % 4096).reshape(12, 10).astype(np.uint16)
    ds = ct_slice(stored, (0.0, 0.0, 0.0), SeriesUIDs(), bits_stored=12, rescale=(1.0, -1024.0))
    lut = Dataset()
    lut.LUTDescriptor = [2048, 100, 16]  # 2048 entries for stored values 100..2147
    table = (np.arange(2048) * 2 + 7).astype(np.uint16)
    lut.add_new("LUTData", "US", table.tolist())
    lut.ModalityLUTType = "HU"
    ds.ModalityLUTSequence = [lut]
    del ds.RescaleSlope, ds.RescaleIntercept
    dcmwrite(tmp_path / "lut.dcm", ds, enforce_file_format=True)

    volume = load_dicom(tmp_path).volumes[0]

    expected = table[np.clip(stored.astype(int) - 100, 0, 2047)]
    np.testing.assert_array_equal(volume.voxels[0], expected)


# ----------------------------------------------------------------------------- gzipped files


def test_gzipped_dicom_files_are_read(tmp_path):
    positions = stack_positions(4, (0.0, 0.0, 2.5))
    for path in write_stack(tmp_path / "plain", positions):
        with open(path, "rb") as raw, gzip.open(tmp_path / f"{path.name}.gz", "wb") as packed:
            shutil.copyfileobj(raw, packed)
    shutil.rmtree(tmp_path / "plain")

    (info,) = list_series(tmp_path)
    result = load_dicom(tmp_path)

    assert info.shape == (4, 12, 10)
    assert result.skipped == []
    assert_slices_in_place(result.volumes[0], positions, [slice_pixels(k) for k in range(4)])


def test_gzipped_files_with_headers_longer_than_a_read_buffer_are_read_whole(tmp_path):
    # a header of 300 kB (a vendor's private block, incompressible): gzip is still reading it
    # through the file when the loader looks up the size at the file's end
    positions = stack_positions(3, (0.0, 0.0, 2.5))
    uids = SeriesUIDs()
    blob = np.random.default_rng(7).bytes(300_000)
    for k, position in enumerate(positions):
        ds = ct_slice(slice_pixels(k), position, uids, instance_number=k + 1)
        ds.private_block(0x0029, "A VENDOR", create=True).add_new(0x10, "OB", blob)
        plain = tmp_path / f"{k}.dcm"
        dcmwrite(plain, ds, enforce_file_format=True)
        (tmp_path / f"{k}.dcm.gz").write_bytes(gzip.compress(plain.read_bytes()))
        plain.unlink()

    result = load_dicom(tmp_path)

    assert result.skipped == []
    assert_slices_in_place(
        result.volumes[0], positions, [slice_pixels(k) for k in range(3)], pixel_spacing=SPACING
    )


def test_gzipped_files_too_short_or_not_dicom_are_skipped_with_their_reason(tmp_path):
    write_stack(tmp_path, stack_positions(2, (0.0, 0.0, 2.5)))
    (tmp_path / "a.gz").write_bytes(b"\x1f\x8b")  # shorter than a gzip trailer
    (tmp_path / "b.gz").write_bytes(b"\x1f\x8b\x08\x00\x00")
    (tmp_path / "c.gz").write_bytes(gzip.compress(b"DICM" * 10))

    result = load_dicom(tmp_path)

    assert result.volumes[0].shape == (2, 12, 10)
    positions = file_positions(tmp_path)
    assert sorted((s.label, s.reason) for s in result.skipped) == [
        (f"file {positions[tmp_path / 'a.gz']}", "unreadable or truncated DICOM header (EOFError)"),
        (f"file {positions[tmp_path / 'b.gz']}", "unreadable or truncated DICOM header (EOFError)"),
        (f"file {positions[tmp_path / 'c.gz']}", "not a DICOM file"),
    ]


def test_a_damaged_gzipped_file_is_skipped_with_its_reason(tmp_path):
    positions = stack_positions(3, (0.0, 0.0, 2.5))
    paths = write_stack(tmp_path, positions)
    packed = gzip.compress(paths[0].read_bytes())
    (tmp_path / "broken.dcm.gz").write_bytes(packed[: len(packed) // 2])

    result = load_dicom(tmp_path)

    assert result.volumes[0].shape == (3, 12, 10)
    (skipped,) = result.skipped
    assert skipped.local_path() == tmp_path / "broken.dcm.gz"
    assert skipped.label == f"file {file_positions(tmp_path)[tmp_path / 'broken.dcm.gz']}"
    assert skipped.reason == "truncated: the file ends before its pixel data"
