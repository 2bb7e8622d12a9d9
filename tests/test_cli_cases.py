"""The cases command: the case library from a terminal, checked against the library itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from dicom_helpers import stack_positions, write_stack
from test_frames import four_d_ct

from napari_scan_classifier.cases import CaseLibrary
from napari_scan_classifier.cli import main
from napari_scan_classifier.io import load_scans
from napari_scan_classifier.io.dicom_write import SeriesUIDs
from napari_scan_classifier.io.nifti import save_nifti
from napari_scan_classifier.phantoms import make_ct_phantom
from napari_scan_classifier.volume import Volume


def run(capsys: pytest.CaptureFixture[str], library: Path, *argv: str) -> tuple[int, str, str]:
    code = main(["cases", *argv, "--library", str(library)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def scan(tmp_path: Path) -> tuple[Path, Volume]:
    volume = make_ct_phantom(3, shape=(12, 24, 24), spacing=(5.0, 2.0, 2.0)).volume
    return save_nifti(volume, tmp_path / "scan.nii.gz"), volume


def test_a_scan_added_with_its_mask_is_the_library_case_with_its_voxels_and_mask(
    scan, tmp_path, capsys
) -> None:
    path, volume = scan
    mask = np.zeros(volume.shape, np.uint8)
    mask[4:7, 8:12, 10:15] = 1
    mask_path = save_nifti(Volume(mask, volume.affine, "SEG"), tmp_path / "mask.nii.gz")
    library = tmp_path / "library"

    code, out, _ = run(
        capsys, library, "add", str(path), "--label", "lesion", "--mask", str(mask_path)
    )

    assert code == 0
    (record,) = CaseLibrary(library).list()
    assert out.strip() == f"added case {record.case_id}: lesion, 12x24x24 voxels, with its mask"
    stored, stored_mask = CaseLibrary(library).load(record.case_id)
    np.testing.assert_allclose(stored.voxels, volume.voxels)
    np.testing.assert_allclose(stored.affine, volume.affine, atol=1e-5)
    np.testing.assert_array_equal(stored_mask, mask)
    assert record.spacing == pytest.approx((5.0, 2.0, 2.0))


def test_list_shows_every_case_and_the_count_per_class(scan, tmp_path, capsys) -> None:
    path, volume = scan
    library = tmp_path / "library"
    other = save_nifti(Volume(volume.voxels + 1, volume.affine, "CT"), tmp_path / "b.nii.gz")
    run(capsys, library, "add", str(path), "--label", "lesion")
    run(capsys, library, "add", str(other), "--label", "normal")

    code, out, _ = run(capsys, library, "list")
    _, listed, _ = run(capsys, library, "list", "--json")

    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["case", "id", "label"]
    assert [line.split()[1:4] for line in lines[1:3]] == [
        ["lesion", "CT", "12x24x24"],
        ["normal", "CT", "12x24x24"],
    ]
    assert lines[-1] == "2 cases: lesion 1, normal 1"
    records = json.loads(listed)
    assert [r["label"] for r in records] == ["lesion", "normal"]
    assert [r["case_id"] for r in records] == [r.case_id for r in CaseLibrary(library).list()]


def test_relabel_delete_and_restore_change_the_library(scan, tmp_path, capsys) -> None:
    path, _ = scan
    library = tmp_path / "library"
    run(capsys, library, "add", str(path), "--label", "lesion")
    (record,) = CaseLibrary(library).list()
    case = record.case_id

    assert run(capsys, library, "relabel", case, "normal")[:2] == (
        0,
        f"case {case} is now normal\n",
    )
    assert CaseLibrary(library).get(case).label == "normal"
    assert run(capsys, library, "delete", case)[0] == 0
    assert CaseLibrary(library).list() == []
    _, trash, _ = run(capsys, library, "list", "--trash")
    assert trash.splitlines()[-1] == "1 case in the trash: normal 1"
    assert run(capsys, library, "restore", case)[0] == 0
    assert [r.case_id for r in CaseLibrary(library).list()] == [case]


def test_export_then_import_brings_the_cases_into_another_library_once(
    scan, tmp_path, capsys
) -> None:
    path, volume = scan
    library, other = tmp_path / "library", tmp_path / "other"
    run(capsys, library, "add", str(path), "--label", "lesion")
    archive = tmp_path / "cases.zip"

    assert run(capsys, library, "export", str(archive))[:2] == (
        0,
        "wrote 1 case to cases.zip\n",
    )
    code, out, _ = run(capsys, other, "import", str(archive))
    again, out_again, err_again = run(capsys, other, "import", str(archive))

    assert (code, out) == (0, "imported 1 case, skipped 0\n")
    (record,) = CaseLibrary(other).list()
    np.testing.assert_allclose(CaseLibrary(other).load(record.case_id)[0].voxels, volume.voxels)
    assert (again, out_again) == (0, "imported 0 cases, skipped 1\n")
    assert "already in the library" in err_again


def test_a_folder_of_several_series_needs_the_series_key(tmp_path, capsys) -> None:
    folder = tmp_path / "study"
    for number in (1, 2):
        write_stack(
            folder / f"s{number}",
            stack_positions(4, (0, 0, 2.5)),
            uids=SeriesUIDs(),
            series_number=number,
        )
    keys = [v.metadata["series_key"] for v in load_scans(folder).volumes]
    save_nifti(load_scans(folder / "s1").volumes[0], folder / "s1.nii.gz")
    library = tmp_path / "library"

    code, _, err = run(capsys, library, "add", str(folder), "--label", "normal")
    chosen = run(capsys, library, "add", str(folder), "--label", "normal", "--series", keys[1])

    assert code == 2
    assert err == (
        f"error: <input 1> holds 3 scans ({keys[0]}, {keys[1]}: choose one with --series; "
        "1 NIfTI file: give the file itself)\n"
    )
    assert chosen[0] == 0 and chosen[2] == ""
    (record,) = CaseLibrary(library).list()
    assert record.shape == (4, 12, 10)


def test_files_left_out_of_the_scan_are_named_by_their_place(tmp_path, capsys) -> None:
    folder = tmp_path / "Doe_John"  # folders are often named after patients
    write_stack(folder, stack_positions(4, (0, 0, 2.5)))
    (folder / "zz_broken.dcm").write_bytes(b"DICM" * 40)

    code, out, err = run(capsys, tmp_path / "library", "add", str(folder), "--label", "normal")

    assert code == 0 and out.startswith("added case ")
    assert "skipped a file of input 1: file 5: DICOM file without image data" in err
    assert "Doe_John" not in err


def test_a_4d_scan_needs_its_frame_and_keeps_that_volume(tmp_path, capsys) -> None:
    path = save_nifti(four_d_ct(), tmp_path / "perfusion.nii.gz")
    library = tmp_path / "library"

    code, _, err = run(capsys, library, "add", str(path), "--label", "normal")
    chosen = run(capsys, library, "add", str(path), "--label", "normal", "--frame", "2")

    assert code == 2 and "is 4D, with 3 volumes: choose one with --frame (0 to 2)" in err
    assert chosen[0] == 0
    (record,) = CaseLibrary(library).list()
    stored, _ = CaseLibrary(library).load(record.case_id)
    np.testing.assert_allclose(stored.voxels, four_d_ct().frame(2).voxels)


def test_a_mask_on_another_grid_or_not_nifti_is_refused_naming_the_mask(
    scan, tmp_path, capsys
) -> None:
    path, volume = scan
    shifted = volume.affine.copy()
    shifted[:3, 3] += 4.0
    moved = save_nifti(Volume(np.zeros(volume.shape, np.uint8), shifted), tmp_path / "m.nii.gz")
    text = tmp_path / "mask.txt"
    text.write_text("not a mask")
    library = tmp_path / "library"

    elsewhere = run(capsys, library, "add", str(path), "--label", "lesion", "--mask", str(moved))
    not_nifti = run(capsys, library, "add", str(path), "--label", "lesion", "--mask", str(text))

    assert elsewhere[0] == 2 and "The mask is on another grid than the scan" in elsewhere[2]
    assert not_nifti[0] == 2
    assert not_nifti[2] == "error: the mask (--mask): not a NIfTI file (.nii, .nii.gz)\n"
    assert CaseLibrary(library).list() == []
