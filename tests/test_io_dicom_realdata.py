"""DICOM reading checked against real scanner files and independent references, in world mm.

References: dcm2niix NIfTI output (dcm_qa_ts, dcm_qa_xa30, dcm_qa_more), nibabel's Siemens
mosaic reader and pydicom's own decoding. Every comparison maps reference voxels to world
millimetres through the reference's affine and reads our volume at that position, so
orientation, order and flips are all checked, not just the array shape. Skipped where
../shared/data is absent.
"""

from __future__ import annotations

import gzip
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.pixels import apply_rescale

from napari_scan_classifier.errors import UnreadableScanError
from napari_scan_classifier.io.dicom import list_series, load_dicom
from napari_scan_classifier.volume import Volume, lps_to_world, ras_to_world

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PYDICOM = DATA / "pydicom_test_files" / "pydicom"
PYDICOM_DATA = DATA / "pydicom_test_files" / "pydicom-data"
NICOM = DATA / "nibabel_test_data" / "nicom_tests_data"

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not DATA.is_dir(), reason="shared/data (public DICOM files) is absent"),
]


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path.name} is not in the shared data")
    return path


def load_one(path: Path) -> Volume:
    result = load_dicom(need(path))
    assert len(result.volumes) == 1
    assert result.skipped == []
    return result.volumes[0]


def assert_same_in_world(
    volume: Volume, values: np.ndarray, world_affine: np.ndarray, float32: bool = False
) -> None:
    """Every reference voxel (index -> world by ``world_affine``) equals ours at that position
    (to float32 precision with ``float32``)."""
    ijk = np.indices(values.shape).reshape(values.ndim, -1).T
    world = ijk @ world_affine[:3, :3].T + world_affine[:3, 3]
    index = volume.world_to_index(world)
    voxel = np.rint(index).astype(int)
    np.testing.assert_allclose(index, voxel, atol=1e-3)  # reference voxels sit on our grid
    assert np.all((voxel >= 0) & (voxel < volume.shape))  # and cover exactly our volume
    assert values.size == np.prod(volume.shape)
    tolerance = {"rtol": 2e-7, "atol": 1e-4} if float32 else {"rtol": 0}
    np.testing.assert_allclose(volume.voxels[tuple(voxel.T)], values[tuple(ijk.T)], **tolerance)


def assert_matches_nifti(volume: Volume, nifti_path: Path) -> None:
    reference = nib.load(need(nifti_path))
    assert_same_in_world(volume, reference.get_fdata(), ras_to_world(reference.affine))


# ----------------------------------------------------------------------------- dcm2niix references


@pytest.mark.parametrize("number", range(1, 10))
def test_dcm_qa_ts_mosaic_in_every_transfer_syntax_matches_dcm2niix(number):
    """One Siemens mosaic (6x6 tiles of 64x64, 35 slices) stored in nine transfer syntaxes."""
    volume = load_one(DATA / "dcm_qa_ts" / "In" / f"{number}.dcm")

    assert volume.shape == (35, 64, 64)
    np.testing.assert_allclose(volume.spacing, (3.6, 3.25, 3.25), atol=1e-6)
    assert volume.metadata["geometry_warnings"] == []
    assert_matches_nifti(volume, DATA / "dcm_qa_ts" / "Ref" / f"{number}.nii")


def test_dcm_qa_ts_folder_gives_one_volume_per_series():
    folder = need(DATA / "dcm_qa_ts" / "In")
    infos = list_series(folder)
    volumes = load_dicom(folder).volumes

    assert len(infos) == len(volumes) == 9
    assert {info.shape for info in infos} == {(35, 64, 64)}
    for volume in volumes[1:]:
        np.testing.assert_array_equal(volume.voxels, volumes[0].voxels)
        np.testing.assert_allclose(volume.affine, volumes[0].affine)


def test_dcm_qa_xa30_enhanced_multiframe_matches_dcm2niix():
    (dicom_file,) = need(DATA / "dcm_qa_xa30" / "In").rglob("*.dcm")
    volume = load_one(dicom_file)

    assert volume.shape == (96, 128, 128)
    np.testing.assert_allclose(volume.spacing, (2.0, 2.0, 2.0), atol=1e-6)
    assert volume.metadata["series_description"] == "anat-T1w_acq-tfl"
    assert_matches_nifti(volume, DATA / "dcm_qa_xa30" / "Ref" / "5_anat-T1w_acq-tfl.nii")


# ----------------------------------------------------------------------------- nibabel references


def test_siemens_dwi_mosaic_matches_nibabel(tmp_path):
    """A 7x7 mosaic of 48 tiles: IPP moved to the first tile, slices along the CSA normal."""
    from nibabel.nicom import dicomwrappers  # imported here: it warns on import

    path = tmp_path / "siemens_dwi_0.dcm"
    with gzip.open(need(NICOM / "siemens_dwi_0.dcm.gz")) as packed, open(path, "wb") as out:
        shutil.copyfileobj(packed, out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = dicomwrappers.wrapper_from_file(str(path))
        values, affine_lps = reference.get_data(), reference.affine

    volume = load_one(path)

    assert volume.shape == (48, 128, 128)
    np.testing.assert_allclose(volume.spacing, (3.0, 1.796875, 1.796875), atol=1e-5)
    assert_same_in_world(volume, values, lps_to_world(affine_lps))


def test_nicom_0dcm_mosaic_with_inconsistent_header_is_refused():
    """0.dcm is a 256x256 stand-in whose header still claims 48 tiles of 128x128."""
    with pytest.raises(UnreadableScanError, match=r"^the input: Siemens mosaic of 48 tiles"):
        load_dicom(need(NICOM / "0.dcm"))


# ----------------------------------------------------------------------------- pydicom test files


def pydicom_values(path: Path) -> np.ndarray:
    ds = dcmread(path)
    return apply_rescale(ds.pixel_array, ds)


def test_ct_small_in_hounsfield_units():
    path = need(PYDICOM / "CT_small.dcm")
    volume = load_one(path)

    assert volume.shape == (1, 128, 128)
    assert volume.voxels.dtype == np.int16
    np.testing.assert_allclose(volume.spacing[1:], (0.661468, 0.661468))
    assert volume.metadata["units"] == "HU"
    np.testing.assert_array_equal(volume.voxels[0], pydicom_values(path))
    ipp = [-158.135803, -179.035797, -75.699997]
    np.testing.assert_allclose(volume.index_to_world([0, 0, 0])[0], [-ipp[2], ipp[1], ipp[0]])


@pytest.mark.parametrize(
    "variant",
    ["implicit", "bigendian", "RLE", "jp2klossless", "jpeg_ls_lossless"],
)
def test_mr_small_variants_equal_the_uncompressed_file(variant):
    reference = load_one(PYDICOM / "MR_small.dcm")
    volume = load_one(PYDICOM / f"MR_small_{variant}.dcm")

    assert volume.shape == (1, 64, 64)
    np.testing.assert_allclose(volume.spacing, (0.8, 0.3125, 0.3125))
    np.testing.assert_array_equal(reference.voxels[0], pydicom_values(PYDICOM / "MR_small.dcm"))
    np.testing.assert_array_equal(volume.voxels, reference.voxels)
    np.testing.assert_allclose(volume.affine, reference.affine)


def test_pydicom_folder_keeps_every_encoding_of_a_shared_instance():
    """MR_small comes in six encodings sharing one instance UID: not byte-identical copies, so
    each is a volume (with a warning), all equal to the uncompressed one."""
    result = load_dicom(need(PYDICOM))

    shapes = sorted(v.shape for v in result.volumes)
    assert shapes == [(1, 64, 64)] * 6 + [(1, 128, 128), (15, 10, 10)]
    assert result.skipped == []
    small = [v for v in result.volumes if v.shape == (1, 64, 64)]
    for volume in small[1:]:
        np.testing.assert_array_equal(volume.voxels, small[0].voxels)
    repeated = [v for v in small if v.metadata["geometry_warnings"]]
    assert len(repeated) == 5


@pytest.mark.parametrize("variant", ["", "_RLE", "_jpeg_2k_lossless", "_jpeg_ls_lossless"])
def test_emri_small_enhanced_mr_and_its_compressed_variants(variant):
    path = PYDICOM_DATA / f"emri_small{variant}.dcm"
    volume = load_one(path)

    assert volume.shape == (10, 64, 64)
    np.testing.assert_allclose(volume.spacing, (1.2, 1.0, 1.0))
    np.testing.assert_array_equal(
        volume.voxels, dcmread(PYDICOM_DATA / "emri_small.dcm").pixel_array
    )
    notes = " ".join(volume.metadata["geometry_warnings"])  # the file carries no geometry
    assert "no slice positions" in notes
    assert "no pixel spacing" in notes


def test_enhanced_ct_frames_placed_by_their_functional_groups():
    path = need(PYDICOM_DATA / "eCT_Supplemental.dcm")
    volume = load_one(path)

    assert volume.shape == (2, 512, 512)
    assert volume.voxels.dtype == np.int16
    np.testing.assert_allclose(volume.spacing, (10.0, 0.388672, 0.388672))
    ds = dcmread(path)
    frames = ds.PerFrameFunctionalGroupsSequence
    iop = np.array(
        ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient,
        float,
    )
    ipps = np.array([f.PlanePositionSequence[0].ImagePositionPatient for f in frames], float)
    order = np.argsort(ipps @ np.cross(iop[:3], iop[3:]))  # along the slice normal
    for z, frame in enumerate(order):
        ipp = ipps[frame]
        world = volume.index_to_world([z, 0, 0])[0]
        np.testing.assert_allclose(world, [-ipp[2], ipp[1], ipp[0]], atol=1e-4)
        np.testing.assert_array_equal(volume.voxels[z], ds.pixel_array[frame].astype(int) - 1024)
    assert volume.metadata["units"] == "HU"


def test_rtdose_frames_follow_the_grid_frame_offsets():
    path = need(PYDICOM / "rtdose.dcm")
    volume = load_one(path)
    ds = dcmread(path)

    assert volume.shape == (15, 10, 10)
    np.testing.assert_allclose(volume.spacing, (5.0, 10.0, 10.0))
    assert volume.metadata["units"] == ds.DoseUnits == "RELATIVE"
    dose = ds.pixel_array * float(ds.DoseGridScaling)
    np.testing.assert_allclose(volume.voxels, dose, rtol=1e-6)
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    for z, offset in enumerate(float(v) for v in ds.GridFrameOffsetVector):
        lps = ipp + np.array([0.0, 0.0, offset])
        np.testing.assert_allclose(volume.index_to_world([z, 0, 0])[0], [-lps[2], lps[1], lps[0]])


# ----------------------------------------------------------------------------- dcm_qa_more

MORE = DATA / "dcm_qa_more"


def assert_timepoints_match_nifti(volume: Volume, nifti_path: Path, scale=None) -> None:
    """Each reference time point equals ours at the same world positions; ``scale`` maps the
    reference's stored values to ours when dcm2niix writes another scaling."""
    reference = nib.load(need(nifti_path))
    values = reference.get_fdata() if scale is None else scale(reference.dataobj.get_unscaled())
    values = values[..., None] if values.ndim == 3 else values
    voxels = volume.voxels if volume.voxels.ndim == 4 else volume.voxels[None]
    assert voxels.shape[0] == values.shape[3]
    for t in range(values.shape[3]):
        one = Volume(voxels[t], volume.affine, volume.modality)
        assert_same_in_world(one, values[..., t], ras_to_world(reference.affine))


def load_more(folder: str) -> list[Volume]:
    result = load_dicom(need(MORE / folder))
    assert result.skipped == []
    return result.volumes


def test_uih_grid_mosaics_match_dcm2niix_per_time_point():
    """17 files of 4x5 tiles (64x64): 20 slices x 17 volumes, each tile at its own IPP."""
    (volume,) = load_more("uih_dti_ap/In")

    assert volume.voxels.shape == (17, 20, 64, 64)
    np.testing.assert_allclose(volume.spacing, (4.2, 3.5, 3.5), atol=1e-4)
    assert volume.metadata["geometry_warnings"] == []
    assert_timepoints_match_nifti(volume, MORE / "uih_dti_ap/Ref/dti_tra_dir16_AP_9_134431.nii.gz")


@pytest.mark.slow
def test_ge_pepolar_volumes_split_and_flipped_as_dcm2niix():
    forward, reverse = load_more("polar_fm/In")

    assert (forward.metadata["series_number"], reverse.metadata["series_number"]) == (6, 1006)
    assert forward.voxels.shape == reverse.voxels.shape == (2, 60, 128, 128)
    assert_timepoints_match_nifti(forward, MORE / "polar_fm/Ref/6_FM_cv12_2_3mm.nii.gz")
    assert_timepoints_match_nifti(reverse, MORE / "polar_fm/Ref/1006_FM_cv12_2_3mm.nii.gz")


def test_siemens_xa10_enhanced_time_points_in_temporal_order():
    (volume,) = load_more("enh/In/Siemens/XA10")

    assert volume.voxels.shape == (4, 6, 64, 64)
    assert_timepoints_match_nifti(volume, MORE / "enh/Ref/Siemens_REST1_w_SMS_PF7-8_6.nii.gz")


def test_philips_enhanced_magnitude_and_field_map_match_dcm2niix():
    """dcm2niix writes the magnitude in Philips' floating-point scale (divided by the private
    scale slope); we keep DICOM's rescale (display values): compare on the stored values."""
    magnitude, field_map = load_more("enh/In/Philips")
    frames = dcmread(MORE / "enh/In/Philips/IM_0027_fMAP.dcm").PerFrameFunctionalGroupsSequence

    def rescale_of(frame: int):
        item = frames[frame].PixelValueTransformationSequence[0]
        return float(item.RescaleSlope), float(item.RescaleIntercept)

    (m_slope, m_intercept), (f_slope, f_intercept) = rescale_of(0), rescale_of(len(frames) - 1)
    assert magnitude.shape == field_map.shape == (32, 64, 64)
    ref = MORE / "enh/Ref/Philips_WIP_B0_NS_801"
    for volume, path, slope, intercept in (
        (magnitude, f"{ref}_e1.nii.gz", m_slope, m_intercept),
        (field_map, f"{ref}_e2_fieldmaphz.nii.gz", f_slope, f_intercept),
    ):
        reference = nib.load(need(Path(path)))
        stored = np.asarray(reference.dataobj.get_unscaled(), np.float64)
        expected = stored * slope + intercept
        assert_same_in_world(volume, expected, ras_to_world(reference.affine), float32=True)


@pytest.mark.parametrize(
    ("folder", "references"),
    [
        ("me/In/2_me_FieldMap_GRE", ["me_FieldMap_GRE_2_e1", "me_FieldMap_GRE_2_e2"]),
        ("me/In/3_me_FieldMap_GRE", ["me_FieldMap_GRE_3_e2_ph"]),
        ("me/In/4_me_fMRI", ["me_fMRI_4_e1", "me_fMRI_4_e2"]),
    ],
)
def test_siemens_multi_echo_one_volume_per_echo_as_dcm2niix(folder, references):
    volumes = load_more(folder)

    assert len(volumes) == len(references)
    for volume, name in zip(volumes, references, strict=True):
        assert_timepoints_match_nifti(volume, MORE / "me/Ref" / f"{name}.nii.gz")
