"""What the command line prints of paths: the outputs the user chose, and the files written
under them, as they are; the inputs by their number; any other path as ``<path>``."""

from __future__ import annotations

from pathlib import Path

import pytest

from napari_scan_classifier.cli import main
from napari_scan_classifier.io.nifti import save_nifti
from napari_scan_classifier.phantoms import make_ct_phantom
from napari_scan_classifier.privacy import Redactor

PATIENT = "DOE^JOHN_1234"


def test_files_written_under_a_chosen_output_are_printed_as_they_are(tmp_path: Path) -> None:
    scans, out = tmp_path / PATIENT, tmp_path / "nifti"
    redact = Redactor([scans], keep=[out])

    assert redact(f"{out}/series_001_CT.nii.gz: note") == f"{out}/series_001_CT.nii.gz: note"
    assert redact(f"'{out}/series_002_MR.nii.gz'") == f"'{out}/series_002_MR.nii.gz'"
    assert redact(f"wrote {out}") == f"wrote {out}"


def test_inputs_and_other_paths_stay_hidden_even_under_a_chosen_output(tmp_path: Path) -> None:
    scans, out = tmp_path / PATIENT, tmp_path / "nifti"
    redact = Redactor([scans], keep=[out])

    assert redact(f"{out}/{PATIENT}/1.dcm") == f"{out}<path>"
    assert redact(f"{out}_old/a.nii") == "<path>"  # only starts like the output
    read = f"read {scans}/a.dcm into {out}/a.nii"
    assert redact(read) == f"read <input 1>/a.dcm into {out}/a.nii"


def test_convert_prints_the_files_it_wrote(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    scans = tmp_path / PATIENT
    scans.mkdir()
    save_nifti(make_ct_phantom(0, shape=(8, 16, 16)).volume, scans / f"{PATIENT}.nii.gz")
    out = tmp_path / "nifti"

    assert main(["convert", str(scans / f"{PATIENT}.nii.gz"), "--out", str(out)]) == 0

    printed = capsys.readouterr()
    assert printed.out.splitlines() == [str(out / "series_001_CT.nii.gz")]
    assert (out / "series_001_CT.nii.gz").is_file()
    assert "DOE" not in printed.out + printed.err
