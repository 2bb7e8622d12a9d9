"""DICOM reading on generated series: discovery, geometry in world mm, values, bad files."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
from dicom_helpers import (
    AXIAL,
    assert_slices_in_place,
    enhanced_dataset,
    file_positions,
    multiframe_dataset,
    normal_of,
    oblique_orientation,
    pixel_world,
    slice_pixels,
    stack_positions,
    write_stack,
)
from pydicom import dcmread
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from napari_scan_classifier.errors import (
    CancelledError,
    UnreadableScanError,
    UnsupportedTransferSyntaxError,
)
from napari_scan_classifier.io import dicom, load_scans
from napari_scan_classifier.io.dicom import SeriesInfo, list_series, load_dicom
from napari_scan_classifier.io.dicom_write import (
    SeriesUIDs,
    slice_dataset,
    stack_geometry,
    write_series,
    write_slice,
)
from napari_scan_classifier.volume import Volume, lps_to_world

SECRET = "Doe^Jane"


def ct_volume(shape=(7, 12, 10), affine_lps=None) -> Volume:
    """HU values unique per voxel, on a non-trivial (oblique, offset) grid."""
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    hu = (100 * z + 7 * y + x - 1000).astype(np.int16)
    if affine_lps is None:
        turn = np.linalg.qr(np.array([[1.0, 0.2, 0.1], [-0.1, 1.0, 0.3], [0.2, -0.3, 1.0]]))[0]
        turn[:, 0] *= -np.sign(np.linalg.det(turn))  # z along +normal = cross(x, y)
        affine_lps = np.eye(4)
        affine_lps[:3, :3] = turn @ np.diag([2.5, 0.8, 0.6])
        affine_lps[:3, 3] = (-50.0, 20.0, 33.0)
    return Volume(
        hu,
        lps_to_world(affine_lps),
        modality="CT",
        metadata={"window_center": 40.0, "window_width": 400.0, "body_part": "CHEST"},
    )


def only_volume(path, **kwargs) -> Volume:
    result = load_dicom(path, **kwargs)
    assert len(result.volumes) == 1, result
    return result.volumes[0]


# ----------------------------------------------------------------------------- round trips


def test_write_series_round_trip_with_shuffled_file_names(tmp_path):
    volume = ct_volume()
    paths = write_series(
        volume, tmp_path, series_description="chest", series_number=7, patient_name=SECRET
    )
    instance_order = [
        int(dcmread(p, stop_before_pixels=True).InstanceNumber) for p in sorted(paths)
    ]
    assert instance_order != sorted(instance_order)  # names do not follow slice order

    loaded = only_volume(tmp_path)

    np.testing.assert_array_equal(loaded.voxels, volume.voxels)
    assert loaded.voxels.dtype == np.int16
    np.testing.assert_allclose(loaded.affine, volume.affine, atol=1e-4)
    meta = loaded.metadata
    assert meta["series_description"] == "chest"
    assert meta["series_number"] == 7
    assert meta["modality"] == loaded.modality == "CT"
    assert meta["units"] == "HU"
    assert (meta["window_center"], meta["window_width"]) == (40.0, 400.0)
    assert meta["transfer_syntax"] == "Explicit VR Little Endian"
    assert meta["image_type"] == ("ORIGINAL", "PRIMARY", "AXIAL")
    assert meta["body_part"] == "CHEST"
    assert meta["geometry_warnings"] == []
    np.testing.assert_allclose(meta["spacing"], (2.5, 0.8, 0.6), atol=1e-4)
    assert SECRET not in repr(meta)


def test_left_handed_volume_comes_back_flipped_but_in_place(tmp_path):
    volume = ct_volume()
    flipped_lps = np.array(
        [[0, 0, 0.6, -40.0], [0, 0.8, 0, 10.0], [-2.5, 0, 0, 70.0], [0, 0, 0, 1.0]]
    )  # slices step along -normal (towards the feet)
    volume = Volume(volume.voxels, lps_to_world(flipped_lps), modality="CT")
    write_series(volume, tmp_path)

    loaded = only_volume(tmp_path)

    np.testing.assert_array_equal(loaded.voxels, volume.voxels[::-1])
    last = [volume.shape[0] - 1, 0, 0]
    np.testing.assert_allclose(loaded.index_to_world([0, 0, 0]), volume.index_to_world(last))
    np.testing.assert_allclose(loaded.affine[:3, 0], -volume.affine[:3, 0])


def test_write_series_refuses_what_dicom_cannot_hold(tmp_path):
    volume = ct_volume((3, 12, 10))
    with pytest.raises(ValueError, match="finite"):
        write_series(volume.with_voxels(np.full(volume.shape, np.nan)), tmp_path)
    with pytest.raises(ValueError, match="16-bit"):
        write_series(volume.with_voxels(np.full(volume.shape, 40000.0)), tmp_path)
    skewed = volume.affine.copy()
    skewed[:3, 1] += skewed[:3, 2]  # rows no longer perpendicular to columns
    with pytest.raises(ValueError, match="perpendicular"):
        write_series(Volume(volume.voxels, skewed, modality="CT"), tmp_path)
    with pytest.raises(ValueError, match="only"):
        write_series(Volume(volume.voxels, volume.affine, modality="PT"), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_every_pixel_lands_at_its_dicom_position(tmp_path):
    positions = stack_positions(6, (0.0, 0.0, 3.0))
    pixels = [slice_pixels(k) for k in range(6)]
    write_stack(tmp_path, positions[::-1], pixels=pixels[::-1])

    volume = only_volume(tmp_path)

    assert volume.shape == (6, 12, 10)
    assert_slices_in_place(volume, positions, pixels)
    np.testing.assert_allclose(volume.spacing, (3.0, 0.8, 0.6))


def test_oblique_orientation(tmp_path):
    orientation = oblique_orientation()
    positions = stack_positions(5, 2.2 * normal_of(orientation))
    pixels = [slice_pixels(k) for k in range(5)]
    write_stack(tmp_path, positions, orientation=orientation, pixels=pixels)

    volume = only_volume(tmp_path)

    assert_slices_in_place(volume, positions, pixels, orientation=orientation)
    assert volume.metadata["geometry_warnings"] == []
    assert list_series(tmp_path)[0].orientation == "oblique"


def test_slices_are_sorted_along_the_normal_not_by_instance_number(tmp_path):
    orientation = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # sagittal
    positions = stack_positions(5, 1.5 * normal_of(orientation))
    pixels = [slice_pixels(k) for k in range(5)]
    order = [3, 0, 4, 1, 2]  # instance numbers follow this scrambled order
    write_stack(
        tmp_path,
        [positions[k] for k in order],
        orientation=orientation,
        pixels=[pixels[k] for k in order],
    )

    volume = only_volume(tmp_path)

    assert_slices_in_place(volume, positions, pixels, orientation=orientation)
    assert list_series(tmp_path)[0].orientation == "sagittal"


# ----------------------------------------------------------------------------- series discovery


def test_several_series_in_nested_folders(tmp_path):
    write_series(ct_volume((4, 12, 10)), tmp_path / "a", series_description="one", series_number=1)
    write_series(
        ct_volume((6, 12, 10)), tmp_path / "b" / "deep", series_description="two", series_number=2
    )
    write_series(ct_volume((3, 12, 10)), tmp_path, series_description="three", series_number=3)

    result = load_dicom(tmp_path)

    assert [v.description for v in result.volumes] == ["one", "two", "three"]
    assert [v.shape[0] for v in result.volumes] == [4, 6, 3]
    assert result.skipped == []
    keys = {v.metadata["series_key"] for v in result.volumes}
    assert keys == {info.key for info in list_series(tmp_path)}


def test_localizer_in_the_series_becomes_its_own_volume(tmp_path):
    uids = SeriesUIDs()
    positions = stack_positions(5, (0.0, 0.0, 2.0))
    pixels = [slice_pixels(k) for k in range(5)]
    write_stack(tmp_path, positions, pixels=pixels, uids=uids)
    localizer = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # coronal
    write_stack(
        tmp_path,
        [(-40.0, 0.0, 60.0)],
        orientation=localizer,
        uids=uids,
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
        pixels=[slice_pixels(9, 12, 10)],
    )

    volumes = load_dicom(tmp_path).volumes

    assert sorted(v.shape for v in volumes) == [(1, 12, 10), (5, 12, 10)]
    axial = next(v for v in volumes if v.shape[0] == 5)
    scout = next(v for v in volumes if v.shape[0] == 1)
    assert_slices_in_place(axial, positions, pixels)
    assert scout.metadata["image_type"][-1] == "LOCALIZER"
    assert_slices_in_place(scout, [(-40.0, 0.0, 60.0)], [slice_pixels(9)], orientation=localizer)


def test_list_series_reads_headers_only(tmp_path, monkeypatch):
    write_series(
        ct_volume((5, 12, 10)),
        tmp_path,
        series_description="abdomen",
        series_number=4,
        patient_name=SECRET,
    )

    def no_pixels(*args, **kwargs):
        raise AssertionError("list_series must not decode pixels")

    monkeypatch.setattr(dicom.pixels, "iter_pixels", no_pixels)
    monkeypatch.setattr(dicom.pixels, "_read_native", no_pixels)
    (info,) = list_series(tmp_path)

    assert (info.description, info.series_number, info.modality) == ("abdomen", 4, "CT")
    assert info.shape == (5, 12, 10)
    assert info.n_frames == 5
    assert info.timepoints == 1
    assert info.transfer_syntax == "Explicit VR Little Endian"
    assert not {f.name for f in dataclasses.fields(SeriesInfo)} & {
        "patient_name",
        "patient_id",
        "study_uid",
        "series_uid",
    }
    assert SECRET not in repr(info)


def test_copies_of_the_same_images_are_loaded_once(tmp_path):
    volume = ct_volume((4, 12, 10))
    paths = write_series(volume, tmp_path / "export")
    shutil.copytree(tmp_path / "export", tmp_path / "backup")

    result = load_dicom(tmp_path)

    (loaded,) = result.volumes
    np.testing.assert_array_equal(loaded.voxels, volume.voxels)
    places = file_positions(tmp_path)  # "backup" is read first: its copies are kept
    assert sorted(s.local_path() for s in result.skipped) == sorted(paths)
    assert sorted(map(str, result.skipped)) == sorted(
        f"file {places[p]} (instance {k}): an identical copy of instance {k} "
        "(same instance UID and content)"
        for k, p in enumerate(paths, start=1)
    )


def test_a_dicomdir_stands_for_its_folder(tmp_path):
    volume = ct_volume((3, 12, 10))
    write_series(volume, tmp_path / "IMAGES")
    (tmp_path / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM")  # an index, not an image

    result = load_dicom(tmp_path / "DICOMDIR")

    np.testing.assert_array_equal(result.volumes[0].voxels, volume.voxels)
    assert result.skipped == []


def test_series_selection_by_key(tmp_path):
    write_series(ct_volume((4, 12, 10)), tmp_path, series_description="keep", series_number=1)
    write_series(ct_volume((3, 12, 10)), tmp_path, series_description="drop", series_number=2)
    key = next(info.key for info in list_series(tmp_path) if info.description == "keep")

    volumes = load_dicom(tmp_path, series=[key]).volumes

    assert [v.description for v in volumes] == ["keep"]


def test_repeated_positions_become_time_points(tmp_path):
    uids = SeriesUIDs()
    positions = stack_positions(3, (0.0, 0.0, 4.0))
    for t in range(2):
        pixels = [slice_pixels(10 * t + k) for k in range(3)]
        for k, position in enumerate(positions):
            write_slice(
                tmp_path,
                pixels[k],
                position=position,
                orientation=AXIAL,
                pixel_spacing=(0.8, 0.6),
                uids=uids,
                instance_number=3 * t + k + 1,
            )

    volume = only_volume(tmp_path)

    assert volume.voxels.shape == (2, 3, 12, 10)
    assert volume.metadata["frame_axis"] == "time"
    np.testing.assert_array_equal(volume.voxels[1, 2], slice_pixels(12))


# ----------------------------------------------------------------------------- geometry


def test_missing_slice_is_reported_and_geometry_kept(tmp_path):
    positions = stack_positions(6, (0.0, 0.0, 2.0))
    pixels = [slice_pixels(k) for k in range(6)]
    kept = [0, 1, 2, 4, 5]  # the slice at 16.5 mm is missing
    write_stack(tmp_path, [positions[k] for k in kept], pixels=[pixels[k] for k in kept])

    volume = only_volume(tmp_path)

    assert volume.shape == (6, 12, 10)
    assert_slices_in_place(volume, [positions[k] for k in kept], [pixels[k] for k in kept])
    (warning,) = volume.metadata["geometry_warnings"]
    assert "1 slice(s) missing between 16.50 mm and 20.50 mm" in warning
    assert "output slice(s) 3-3" in warning
    np.testing.assert_array_equal(volume.voxels[3], (pixels[2] + pixels[4]) // 2)
    assert volume.voxels.dtype == np.int16


@pytest.mark.parametrize("tilt_degrees", [12.0, -20.0])
def test_gantry_tilt_with_even_gaps_gives_a_sheared_affine(tmp_path, tilt_degrees):
    along, across = 2.5, 2.5 * np.tan(np.radians(tilt_degrees))
    positions = stack_positions(6, (0.0, across, along))  # each slice shifted along P
    pixels = [slice_pixels(k) for k in range(6)]
    write_stack(tmp_path, positions, pixels=pixels)

    volume = only_volume(tmp_path)

    assert volume.shape == (6, 12, 10)
    assert volume.voxels.dtype == np.int16  # not resampled
    assert_slices_in_place(volume, positions, pixels)
    lps_step = np.array([0.0, across, along])
    np.testing.assert_allclose(volume.affine[:3, 0], [-lps_step[2], lps_step[1], lps_step[0]])
    (warning,) = volume.metadata["geometry_warnings"]
    assert f"sheared by {abs(tilt_degrees):.2f} degrees" in warning


def test_gantry_tilt_with_uneven_gaps_is_resampled(tmp_path):
    depths = np.array([0.0, 2.0, 4.0, 7.0, 9.0, 10.5])
    tilt = np.tan(np.radians(15.0))
    positions = [np.array([-40.0, -30.0 + tilt * d, 12.5 + d]) for d in depths]
    # Each slice's values rise linearly with its depth, so any linear interpolation between
    # neighbours must reproduce 10 * depth + 20 * r + c exactly.
    r, c = np.mgrid[:12, :10]
    pixels = [(10 * d + 20 * r + c).astype(np.int16) for d in depths]
    write_stack(tmp_path, positions, pixels=pixels)

    volume = only_volume(tmp_path)

    assert volume.voxels.dtype == np.float32
    first_world = pixel_world(positions[0], AXIAL, (0.8, 0.6), 0, 0)
    last_world = pixel_world(positions[-1], AXIAL, (0.8, 0.6), 0, 0)
    np.testing.assert_allclose(volume.index_to_world([0, 0, 0])[0], first_world, atol=1e-6)
    np.testing.assert_allclose(
        volume.index_to_world([volume.shape[0] - 1, 0, 0])[0], last_world, atol=1e-6
    )
    step = np.diff(volume.index_to_world([[0, 0, 0], [1, 0, 0]]), axis=0)[0]
    assert abs(step[0]) <= 1.5 + 1e-9  # no coarser than the smallest input gap (S is -I)
    z_axis = np.c_[np.arange(volume.shape[0]), np.zeros((volume.shape[0], 2))]
    depth_of_z = -volume.index_to_world(z_axis)[:, 0] - 12.5  # world I is -S
    expected = 10 * depth_of_z[:, None, None] + 20 * r + c
    np.testing.assert_allclose(volume.voxels, expected, atol=1e-3)
    notes = " ".join(volume.metadata["geometry_warnings"])
    assert "uneven slice spacing: gaps from 1.500 to 3.000 mm" in notes
    assert "resampled onto a regular grid" in notes
    assert "sheared by 15.00 degrees" in notes


def test_write_series_keeps_a_sheared_affine(tmp_path):
    affine_lps = np.array(
        [[0.7, 0, 0, -90.0], [0, 0.7, 0.5, -80.0], [0, 0, 2.0, 30.0], [0, 0, 0, 1.0]]
    )[:, [2, 1, 0, 3]]  # z step (0, 0.5, 2): tilted
    volume = ct_volume((5, 12, 10), affine_lps)
    write_series(volume, tmp_path)

    loaded = only_volume(tmp_path)

    np.testing.assert_allclose(loaded.affine, volume.affine, atol=1e-4)
    np.testing.assert_array_equal(loaded.voxels, volume.voxels)
    assert stack_geometry(volume.affine).pixel_spacing == pytest.approx((0.7, 0.7))


# ----------------------------------------------------------------------------- multi-frame


def test_enhanced_multiframe_per_frame_geometry_rescale_and_orientations(tmp_path):
    coronal = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
    axial_positions = stack_positions(4, (0.0, 0.0, 2.0))
    order = [2, 0, 3, 1]  # frames stored out of spatial order
    positions = [axial_positions[k] for k in order] + [(-40.0, 5.0, 60.0), (-40.0, 8.0, 60.0)]
    orientations = [AXIAL] * 4 + [coronal] * 2
    rescales = [(1.0, -1024.0), (2.0, -1000.0), (1.0, 0.0), (0.5, 10.0), (1.0, 0.0), (1.0, 0.0)]
    frames = np.stack([slice_pixels(k) for k in range(6)])
    enhanced_dataset(frames, positions, orientations, rescales).save_as(
        tmp_path / "enhanced.dcm", enforce_file_format=True
    )

    volumes = load_dicom(tmp_path).volumes

    assert sorted(v.shape for v in volumes) == [(2, 12, 10), (4, 12, 10)]
    axial = next(v for v in volumes if v.shape[0] == 4)
    rescaled = [frames[i] * slope + intercept for i, (slope, intercept) in enumerate(rescales)]
    expected = [rescaled[order.index(k)] for k in range(4)]
    assert axial.voxels.dtype == np.float32
    assert_slices_in_place(axial, axial_positions, expected)
    second = next(v for v in volumes if v.shape[0] == 2)
    assert_slices_in_place(second, positions[4:], rescaled[4:], orientation=coronal)


def test_classic_multiframe_steps_along_the_normal(tmp_path):
    frames = np.stack([slice_pixels(k) for k in range(4)])
    ds = multiframe_dataset(
        frames, position=(10.0, 20.0, 30.0), orientation=AXIAL, pixel_spacing=(0.8, 0.6)
    )
    ds.Modality, ds.SpacingBetweenSlices = "NM", 3.0
    ds.save_as(tmp_path / "nm.dcm", enforce_file_format=True)

    volume = only_volume(tmp_path)

    positions = stack_positions(4, (0.0, 0.0, 3.0), origin=(10.0, 20.0, 30.0))
    assert_slices_in_place(volume, positions, list(frames))
    assert volume.modality == "NM"


def test_cine_frames_are_time_points(tmp_path):
    frames = np.stack([slice_pixels(k) for k in range(5)])
    ds = multiframe_dataset(
        frames, position=(0.0, 0.0, 0.0), orientation=AXIAL, pixel_spacing=(0.3, 0.3)
    )
    ds.Modality, ds.FrameTime, ds.FrameIncrementPointer = "XA", 33.3, 0x00181063
    ds.save_as(tmp_path / "cine.dcm", enforce_file_format=True)

    volume = only_volume(tmp_path)

    np.testing.assert_array_equal(volume.voxels, frames)
    assert volume.metadata["frame_axis"] == "time"


# ----------------------------------------------------------------------------- values


def test_uint16_storage_with_ct_intercept_does_not_wrap(tmp_path):
    stored = [np.full((12, 10), v, np.uint16) for v in (0, 1024, 40000, 65535)]
    stored[2][0, 0] = 7
    write_stack(tmp_path, stack_positions(4, (0, 0, 1.0)), pixels=stored, rescale=(1.0, -1024.0))

    volume = only_volume(tmp_path)

    assert volume.voxels[:, 1, 1].tolist() == [-1024, 0, 38976, 64511]
    assert volume.voxels[2, 0, 0] == -1017
    assert volume.voxels.dtype.kind == "i"


def test_12_bit_ct_stays_int16(tmp_path):
    stored = [np.full((12, 10), v, np.uint16) for v in (0, 1024, 4095)]
    write_stack(
        tmp_path,
        stack_positions(3, (0, 0, 1.0)),
        pixels=stored,
        rescale=(1.0, -1024.0),
        bits_stored=12,
    )

    volume = only_volume(tmp_path)

    assert volume.voxels.dtype == np.int16
    assert volume.voxels[:, 0, 0].tolist() == [-1024, 0, 3071]


def test_rescale_is_applied_per_slice(tmp_path):
    uids = SeriesUIDs()
    positions = stack_positions(3, (0, 0, 2.0))
    pixels = [slice_pixels(k) for k in range(3)]
    for k, rescale in enumerate([(1.0, -1024.0), (2.0, -1000.0), (0.5, 3.25)]):
        write_stack(tmp_path, [positions[k]], pixels=[pixels[k]], uids=uids, rescale=rescale)

    volume = only_volume(tmp_path)

    assert volume.voxels.dtype == np.float32
    np.testing.assert_array_equal(volume.voxels[0], pixels[0] - 1024.0)
    np.testing.assert_array_equal(volume.voxels[1], 2.0 * pixels[1] - 1000.0)
    np.testing.assert_array_equal(volume.voxels[2], 0.5 * pixels[2] + 3.25)


def test_mr_keeps_its_stored_values(tmp_path):
    volume = ct_volume((3, 12, 10))
    mr = Volume(volume.voxels + 1000, volume.affine, modality="MR")
    write_series(mr, tmp_path)

    loaded = only_volume(tmp_path)

    assert loaded.modality == "MR"
    assert "units" not in loaded.metadata
    np.testing.assert_array_equal(loaded.voxels, mr.voxels)


@pytest.mark.parametrize(
    "syntax",
    [
        RLELossless,
        JPEGLSLossless,
        JPEG2000Lossless,
        ImplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
    ],
)
def test_transfer_syntaxes_round_trip(tmp_path, syntax):
    volume = ct_volume((4, 40, 36))  # JPEG 2000 needs tiles of 32 pixels or more
    paths = write_series(volume, tmp_path, transfer_syntax=syntax)
    assert dcmread(paths[0], stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax

    loaded = only_volume(tmp_path)

    np.testing.assert_array_equal(loaded.voxels, volume.voxels)
    np.testing.assert_allclose(loaded.affine, volume.affine, atol=1e-4)
    assert loaded.metadata["transfer_syntax"] == syntax.name


# ----------------------------------------------------------------------------- bad input


def _dicom_without_pixels(folder):
    ds = slice_dataset(
        slice_pixels(0),
        position=(0, 0, 0),
        orientation=AXIAL,
        pixel_spacing=(1, 1),
        uids=SeriesUIDs(),
    )
    for keyword in ("PixelData", "Rows", "Columns"):
        delattr(ds, keyword)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # SR
    ds.save_as(folder / "no_pixels.dcm", enforce_file_format=True)


PATIENT_FOLDER = "DOE^JOHN_1234"


def test_bad_files_are_skipped_and_reported(tmp_path):
    positions = stack_positions(5, (0.0, 0.0, 2.0))
    pixels = [slice_pixels(k) for k in range(5)]
    paths = write_stack(tmp_path, positions, pixels=pixels, patient_name=SECRET)
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[:-100])  # the middle slice loses the end of its pixels
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "header_only.dcm").write_bytes(data[:200])
    _dicom_without_pixels(tmp_path)

    result = load_dicom(tmp_path)

    places = {path.name: n for path, n in file_positions(tmp_path).items()}
    assert sorted(map(str, result.skipped)) == sorted(
        [
            f"file {places[paths[2].name]}: truncated: the file ends inside its pixel data",
            f"file {places['notes.txt']}: not a DICOM file",
            f"file {places['header_only.dcm']}: truncated: the file ends before its pixel data",
            f"file {places['no_pixels.dcm']}: DICOM file without image data",
        ]
    )
    (volume,) = result.volumes
    kept = [0, 1, 3, 4]
    assert_slices_in_place(volume, [positions[k] for k in kept], [pixels[k] for k in kept])
    assert "missing" in volume.metadata["geometry_warnings"][0]
    assert all(SECRET not in str(s) for s in result.skipped)


def test_skipped_files_are_named_by_place_never_by_name(tmp_path):
    """A skipped file is "file N" (its place in the sorted listing), with its series and
    instance where known; its path is kept for the program and never printed or repr'd."""
    folder = tmp_path / PATIENT_FOLDER
    paths = write_stack(folder, stack_positions(3, (0.0, 0.0, 2.0)), transfer_syntax=RLELossless)
    paths[1].write_bytes(paths[1].read_bytes()[:-60])
    (folder / f"{PATIENT_FOLDER}.dcm").write_text("not an image")

    result = load_dicom(folder)

    places = file_positions(folder)
    key = result.volumes[0].metadata["series_key"]
    assert [str(s) for s in result.skipped] == [
        f"file {places[folder / f'{PATIENT_FOLDER}.dcm']}: not a DICOM file",
        f"file {places[paths[1]]} (series 1 ({key}), instance 2): {result.skipped[1].reason}",
    ]
    assert result.skipped[1].reason == (
        "pixel data could not be decoded "
        "(Unable to decode as exceptions were raised by all available plugins:)"
    )
    assert [s.local_path() for s in result.skipped] == [folder / f"{PATIENT_FOLDER}.dcm", paths[1]]
    assert PATIENT_FOLDER not in repr(result) + repr(result.skipped) + str(result.skipped)


def test_undecodable_compressed_slice_is_skipped(tmp_path):
    positions = stack_positions(4, (0.0, 0.0, 2.0))
    pixels = [slice_pixels(k) for k in range(4)]
    paths = write_stack(tmp_path, positions, pixels=pixels, transfer_syntax=RLELossless)
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[:-60])

    result = load_dicom(tmp_path)

    (skipped,) = result.skipped
    assert skipped.local_path() == paths[1]
    key = result.volumes[0].metadata["series_key"]
    assert (
        skipped.label == f"file {file_positions(tmp_path)[paths[1]]} (series 1 ({key}), instance 2)"
    )
    assert "could not be decoded" in skipped.reason
    kept = [0, 2, 3]
    assert_slices_in_place(
        result.volumes[0], [positions[k] for k in kept], [pixels[k] for k in kept]
    )


def test_an_unreadable_input_is_named_generically_never_by_its_name(tmp_path):
    """Folders are often named after patients: the core calls a given file or folder "the
    input" (the command line and the viewer number it)."""
    folder = tmp_path / PATIENT_FOLDER
    folder.mkdir()
    with pytest.raises(UnreadableScanError) as empty:
        load_dicom(folder)
    (folder / f"{PATIENT_FOLDER}.txt").write_text("hello")
    with pytest.raises(UnreadableScanError) as junk:
        load_dicom(folder)
    with pytest.raises(UnreadableScanError) as one:
        load_scans(folder / f"{PATIENT_FOLDER}.txt")
    with pytest.raises(UnreadableScanError) as missing:
        load_scans(folder / f"{PATIENT_FOLDER}.dcm")

    assert [str(e.value) for e in (empty, junk, one, missing)] == [
        "the input: no DICOM images found in this folder (0 files checked)",
        "the input: no DICOM images found in this folder (1 file checked; 1 skipped: "
        "not a DICOM file)",
        "the input: not a DICOM file",
        "the input: no such file or folder",
    ]
    assert all(PATIENT_FOLDER not in repr(e.value) for e in (empty, junk, one, missing))


def _rewrite_syntax(path, syntax):
    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)


def test_unknown_transfer_syntax_raises(tmp_path):
    (path,) = write_stack(
        tmp_path, stack_positions(1, (0, 0, 1.0)), transfer_syntax=RLELossless, patient_name=SECRET
    )
    _rewrite_syntax(path, "1.2.840.10008.1.2.4.100")  # MPEG2: no pixel decoder exists

    with pytest.raises(UnsupportedTransferSyntaxError) as caught:
        load_dicom(path)

    message = str(caught.value)
    key = list_series(path)[0].key
    assert message.startswith(f"series 1 ({key}): ")  # never the file's name
    assert "MPEG2" in message
    assert SECRET not in message


def test_missing_decoder_names_what_to_install(tmp_path, monkeypatch):
    write_series(ct_volume((3, 12, 10)), tmp_path / "plain", series_description="plain")
    jls = write_series(ct_volume((3, 12, 10)), tmp_path / "jls", transfer_syntax=JPEGLSLossless)
    real = dicom.pixels.get_decoder

    def without_jpeg_ls(syntax):
        decoder = real(syntax)
        if syntax != JPEGLSLossless:
            return decoder
        return type("Unavailable", (), {"is_available": False})()

    monkeypatch.setattr(dicom.pixels, "get_decoder", without_jpeg_ls)
    result = load_dicom(tmp_path)

    assert [v.description for v in result.volumes] == ["plain"]
    assert sorted(s.local_path() for s in result.skipped) == sorted(jls)
    places = file_positions(tmp_path)
    assert sorted(s.position for s in result.skipped) == sorted(places[p] for p in jls)
    assert {s.series.split()[0] for s in result.skipped} == {"series"}
    assert "pip install pyjpegls" in result.skipped[0].reason
    assert "JPEG-LS Lossless" in result.skipped[0].reason
    with pytest.raises(UnsupportedTransferSyntaxError, match="pip install pyjpegls"):
        load_dicom(tmp_path / "jls")


# ----------------------------------------------------------------------------- progress, cancel


def test_progress_is_reported_and_cancel_stops(tmp_path):
    write_series(ct_volume((4, 12, 10)), tmp_path)
    calls = []
    load_dicom(tmp_path, progress=lambda done, total, message: calls.append((done, total, message)))
    assert (4, 4, "Reading DICOM headers") in calls
    assert calls[-1][0] == calls[-1][1]

    with pytest.raises(CancelledError):
        load_dicom(tmp_path, cancel=lambda: True)


def test_load_scans_dispatches_dicom_folders(tmp_path):
    volume = ct_volume((3, 12, 10))
    write_series(volume, tmp_path / "series")
    result = load_scans(tmp_path / "series")
    np.testing.assert_array_equal(result.volumes[0].voxels, volume.voxels)
