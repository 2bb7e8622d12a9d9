"""NIfTI reading and writing: geometry in world mm, 3D/4D, NIfTI-1/-2, sform/qform choice."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_scan_classifier.errors import UnreadableScanError
from napari_scan_classifier.io import load_scans
from napari_scan_classifier.io.nifti import load_nifti, save_nifti
from napari_scan_classifier.volume import Volume, ras_to_world

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHARED_NIBABEL = SHARED_DATA / "nibabel_test_data"


def _ras_point(affine: np.ndarray, ijk: tuple[int, int, int]) -> np.ndarray:
    return affine[:3, :3] @ np.asarray(ijk, dtype=float) + affine[:3, 3]


def _world_of_ras(ras: np.ndarray) -> np.ndarray:
    """A RAS point in world mm: apply the RAS->world conversion to a translation-only affine."""
    affine = np.eye(4)
    affine[:3, 3] = ras
    return ras_to_world(affine)[:3, 3]


def _oblique_ras_affine() -> np.ndarray:
    angle = np.deg2rad(20)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.8, 1.2, 3.0])
    affine[:3, 3] = [-40.0, 25.0, -12.0]
    return affine


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_voxel_lands_at_its_ras_position(tmp_path: Path, suffix: str) -> None:
    data = np.zeros((10, 12, 7), dtype=np.int16)  # (i, j, k)
    data[3, 8, 5] = 900
    affine = _oblique_ras_affine()
    path = tmp_path / f"scan{suffix}"
    nib.save(nib.Nifti1Image(data, affine), path)

    volume = load_nifti(path)

    assert volume.shape == (7, 12, 10)
    assert volume.voxels[5, 8, 3] == 900
    expected_world = _world_of_ras(_ras_point(affine, (3, 8, 5)))
    np.testing.assert_allclose(volume.index_to_world([5, 8, 3])[0], expected_world, atol=1e-6)
    np.testing.assert_allclose(volume.spacing, (3.0, 1.2, 0.8), atol=1e-6)


def test_world_axes_are_inferior_posterior_left(tmp_path: Path) -> None:
    path = tmp_path / "identity.nii"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4)), path)
    volume = load_nifti(path)
    # RAS +x (right) is -L, +y (anterior) is -P, +z (superior) is -I: moving along k goes up.
    origin = volume.index_to_world([0, 0, 0])[0]
    np.testing.assert_allclose(volume.index_to_world([0, 0, 1])[0] - origin, [0, 0, -1])
    np.testing.assert_allclose(volume.index_to_world([0, 1, 0])[0] - origin, [0, -1, 0])
    np.testing.assert_allclose(volume.index_to_world([1, 0, 0])[0] - origin, [-1, 0, 0])


def test_sform_preferred_over_qform(tmp_path: Path) -> None:
    image = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), None)
    qform = np.diag([2.0, 2.0, 2.0, 1.0])
    sform = np.diag([1.0, 1.0, 5.0, 1.0])
    image.header.set_qform(qform, code=1)
    image.header.set_sform(sform, code=2)
    nib.save(image, tmp_path / "both.nii")
    np.testing.assert_allclose(load_nifti(tmp_path / "both.nii").spacing, (5.0, 1.0, 1.0))

    image.header.set_sform(sform, code=0)
    nib.save(image, tmp_path / "qform_only.nii")
    np.testing.assert_allclose(load_nifti(tmp_path / "qform_only.nii").spacing, (2.0, 2.0, 2.0))


def test_four_d_and_nifti2(tmp_path: Path) -> None:
    data = np.arange(5 * 6 * 7 * 3, dtype=np.int16).reshape(5, 6, 7, 3)
    path = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti2Image(data, np.diag([1.5, 1.5, 4.0, 1.0])), path)

    volume = load_nifti(path)

    assert volume.voxels.shape == (3, 7, 6, 5)
    assert volume.voxels[2, 4, 1, 3] == data[3, 1, 4, 2]
    assert volume.metadata["source_format"] == "NIfTI-2"
    np.testing.assert_allclose(volume.spacing, (4.0, 1.5, 1.5))


def test_save_round_trip_keeps_geometry_and_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    affine = np.eye(4)
    affine[:3, :3] = [[2.5, 0, 0], [0, 0.7, 0.1], [0.3, 0, 0.7]]  # sheared: gantry-tilt-like
    affine[:3, 3] = [10, -20, 30]
    volume = Volume(rng.normal(size=(6, 9, 8)).astype(np.float32), affine, modality="CT")

    path = save_nifti(volume, tmp_path / "out" / "roundtrip.nii.gz")
    again = load_nifti(path)

    np.testing.assert_array_equal(again.voxels, volume.voxels)
    np.testing.assert_allclose(again.affine, volume.affine, atol=1e-5)
    assert again.modality == "CT"
    assert [p.name for p in path.parent.iterdir()] == ["roundtrip.nii.gz"]


@pytest.mark.parametrize("dtype", [np.int64, np.uint64, bool, np.float16])
def test_save_narrows_types_nifti_cannot_hold(tmp_path: Path, dtype: type) -> None:
    labels = (np.arange(24).reshape(2, 3, 4) % 3).astype(dtype)
    volume = Volume(labels, np.eye(4))
    again = load_nifti(save_nifti(volume, tmp_path / "labels.nii.gz"))
    np.testing.assert_array_equal(again.voxels, labels.astype(again.voxels.dtype))
    np.testing.assert_array_equal(again.voxels.astype(np.float64), labels.astype(np.float64))


def test_save_orthogonal_writes_matching_qform(tmp_path: Path) -> None:
    volume = Volume(np.zeros((3, 4, 5), np.int16), np.diag([3.0, 1.0, 1.0, 1.0]))
    path = save_nifti(volume, tmp_path / "ortho.nii")
    header = nib.load(path).header
    np.testing.assert_allclose(header.get_qform(), header.get_sform(), atol=1e-6)


def test_bad_files_give_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "junk.nii").write_bytes(b"not a nifti file at all")
    with pytest.raises(UnreadableScanError, match=r"^the input: not a readable NIfTI file"):
        load_nifti(tmp_path / "junk.nii")
    with pytest.raises(UnreadableScanError, match=r"^the input: no such file or folder$"):
        load_scans(tmp_path / "missing.nii")

    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), tmp_path / "cut.nii")
    content = (tmp_path / "cut.nii").read_bytes()
    (tmp_path / "cut.nii").write_bytes(content[: len(content) - 40])
    with pytest.raises(
        UnreadableScanError, match=r"^the input: voxel data is truncated or corrupt$"
    ):
        load_nifti(tmp_path / "cut.nii")


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("name", "shape", "spacing"),
    [
        ("anatomical.nii", (25, 41, 33), (2.0, 2.0, 2.0)),
        ("functional.nii", (20, 3, 21, 17), (8.0, 4.0, 4.0)),
        ("example4d.nii.gz", (2, 24, 96, 128), (2.2, 2.0, 2.0)),
        ("example_nifti2.nii.gz", (2, 12, 20, 32), None),
        ("standard.nii.gz", (7, 5, 4), (2.0, 3.0, 1.0)),
    ],
)
def test_nibabel_test_files(name: str, shape: tuple[int, ...], spacing: tuple | None) -> None:
    path = SHARED_NIBABEL / "tests_data" / name
    if not path.exists():
        pytest.skip("shared nibabel test data not present")
    reference = nib.load(path)
    volume = load_nifti(path)
    assert volume.voxels.shape == shape
    if spacing is not None:
        np.testing.assert_allclose(volume.spacing, spacing, atol=1e-4)
    corner = np.array(reference.shape[:3]) - 1
    expected = _world_of_ras(_ras_point(reference.affine, tuple(corner)))
    np.testing.assert_allclose(volume.index_to_world(corner[::-1])[0], expected, atol=1e-4)
    reference_value = np.asanyarray(reference.dataobj)[tuple(corner)]
    if reference_value.ndim:
        reference_value = reference_value.reshape(-1)[0]
    assert volume.voxels[(0,) * (volume.voxels.ndim - 3) + tuple(corner[::-1])] == reference_value


def test_a_folder_holds_nifti_files_beside_dicom_series_and_a_broken_one_is_skipped(
    tmp_path: Path,
) -> None:
    from napari_scan_classifier.io.dicom_write import write_series
    from napari_scan_classifier.phantoms import make_ct_phantom

    folder = tmp_path / "DOE_JANE"
    ct = make_ct_phantom(1, shape=(6, 16, 16), spacing=(4.0, 2.0, 2.0)).volume
    write_series(ct, folder / "dicom", series_number=3)
    scans = [make_ct_phantom(n, shape=(5, 12, 12)).volume for n in (2, 3)]
    for n, volume in enumerate(scans):
        save_nifti(volume, folder / "nifti" / f"scan_{n}.nii.gz")
    (folder / "nifti" / "DOE_cut.nii").write_bytes(b"not nifti")

    result = load_scans(folder)

    assert len(result.volumes) == 3  # the DICOM series first, then the NIfTI files in order
    (series,) = load_scans(folder / "dicom").volumes
    np.testing.assert_array_equal(result.volumes[0].voxels, series.voxels)
    for loaded, saved in zip(result.volumes[1:], scans, strict=True):
        np.testing.assert_array_equal(loaded.voxels, saved.voxels)
        np.testing.assert_allclose(loaded.affine, saved.affine, atol=1e-4)
    (skipped,) = result.skipped
    assert str(skipped).startswith("file 1 of the NIfTI files: not a readable NIfTI file")
    assert skipped.local_path() == folder / "nifti" / "DOE_cut.nii"


def test_a_folder_of_nifti_files_only_needs_no_dicom(tmp_path: Path) -> None:
    from napari_scan_classifier.phantoms import make_ct_phantom

    volume = make_ct_phantom(4, shape=(5, 12, 12)).volume
    save_nifti(volume, tmp_path / "only.nii")
    (tmp_path / "notes.txt").write_text("a sidecar")

    (loaded,) = load_scans(tmp_path).volumes

    np.testing.assert_array_equal(loaded.voxels, volume.voxels)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UnreadableScanError, match="no DICOM images found"):
        load_scans(empty)
