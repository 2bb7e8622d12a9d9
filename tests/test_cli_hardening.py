"""The command line fails before the work, keeps what was done, and never prints an input's name.

Folders of scans are routinely named after patients; here one is ``DOE^JOHN_1234`` and holds a
broken file, and that string must appear nowhere in what the commands print or write.
"""

from __future__ import annotations

import csv
import json
import os
import stat
import time
from pathlib import Path

import pytest
from dicom_helpers import file_positions
from model_fixtures import tiny_bundle

from napari_scan_classifier import outputs
from napari_scan_classifier.cli import main
from napari_scan_classifier.io.dicom_write import write_series
from napari_scan_classifier.models import save_bundle
from napari_scan_classifier.phantoms import make_ct_phantom
from napari_scan_classifier.privacy import Redactor, strip_paths
from napari_scan_classifier.results import classify_paths, write_report

PATIENT = "DOE^JOHN_1234"


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_bundle(tiny_bundle(), tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def patient_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder named like a patient: one CT series, a broken DICOM file and a broken NIfTI."""
    root = tmp_path_factory.mktemp("scans") / PATIENT
    volume = make_ct_phantom(0, shape=(12, 24, 24), spacing=(5.0, 4.0, 4.0)).volume
    write_series(volume, root / f"{PATIENT}_CT", series_number=2, patient_name="DOE^JOHN")
    (root / f"{PATIENT}.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10")
    (root / f"{PATIENT}.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    return root


def _run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_no_input_name_reaches_any_output(capsys, tmp_path, patient_dir, bundle_dir):
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    broken_nifti = tmp_path / f"{PATIENT}.nii.gz"  # not the folder's own broken one
    broken_nifti.write_bytes(b"\x1f\x8b cut short")

    code, stdout, stderr = _run(
        capsys, "classify", patient_dir, broken_nifti, "--model", bundle_dir, "--out", out_json
    )
    code_csv, stdout_csv, stderr_csv = _run(
        capsys, "classify", patient_dir, broken_nifti, "--model", bundle_dir, "--out", out_csv
    )

    assert (code, code_csv) == (0, 0), stderr
    report = json.loads(out_json.read_text())
    assert [(row["input"], row["status"]) for row in report["series"]] == [
        (1, "classified"),
        (1, "failed"),  # the folder's NIfTI file
        (2, "failed"),
    ]
    for row, number in zip(report["series"][1:], (1, 2), strict=True):
        assert row["error"].startswith(f"<input {number}>: not a readable NIfTI file")
    assert report["skipped_files"] == [  # files of input 1 by their sorted place, never name
        {"input": 1, "reason": "file 1: DICOM file without image data"},
    ]
    written = stdout + stderr + stdout_csv + stderr_csv + out_json.read_text() + out_csv.read_text()
    for secret in (PATIENT, "DOE", "JOHN", "1234", str(patient_dir.parent)):
        assert secret not in written
    assert "skipped a file of input 1: file 1: DICOM file without image data\n" in stderr
    assert stderr.count("skipped a file of input 1: ") == 1
    with out_csv.open(newline="") as stream:
        skipped = [row for row in csv.DictReader(stream) if row["status"] == "skipped"]
    assert [(row["input"], row["note"]) for row in skipped] == [
        ("1", "file 1: DICOM file without image data"),
    ]


def test_convert_and_errors_hide_the_input_name(capsys, tmp_path, patient_dir):
    code, stdout, stderr = _run(capsys, "convert", patient_dir, "--out", tmp_path / "nifti")
    assert code == 0, stderr
    assert sorted(p.name for p in (tmp_path / "nifti").iterdir()) == ["series_001_CT.nii.gz"]
    assert stderr.count("skipped a file of input 1: ") == 2
    code, stdout2, stderr2 = _run(
        capsys, "convert", patient_dir / f"{PATIENT}.nii.gz", "--out", tmp_path / "n2"
    )
    assert code == 2
    assert stderr2 == (
        'error: <input 1>: not a readable NIfTI file (Cannot work out file type of "<path>")\n'
    )
    for text in (stdout, stderr, stdout2, stderr2):
        assert PATIENT not in text and "DOE" not in text


def test_show_paths_tells_local_paths_on_stderr_only(capsys, tmp_path, patient_dir, bundle_dir):
    """Opt-in, for one's own machine: stderr says where inputs and skipped files are; stdout and
    the results file still hold no path or name."""
    code, stdout, stderr = _run(
        capsys, "--show-paths", "convert", patient_dir, "--out", tmp_path / "nifti"
    )
    assert code == 0, stderr
    assert stderr.splitlines() == [
        f"input 1 is {patient_dir}",
        "skipped a file of input 1: file 1: DICOM file without image data",
        f"file 1 of input 1 is {patient_dir / f'{PATIENT}.dcm'}",
        "skipped a file of input 1: file 1 of the NIfTI files: not a readable NIfTI file "
        '(Cannot work out file type of "<path>")',
        f"file 1 of the NIfTI files of input 1 is {patient_dir / f'{PATIENT}.nii.gz'}",
    ]
    out = tmp_path / "r.json"
    code, stdout2, stderr2 = _run(
        capsys, "--show-paths", "classify", patient_dir, "--model", bundle_dir, "--out", out
    )
    assert code == 0, stderr2
    assert stderr2.startswith(f"input 1 is {patient_dir}\n")
    for text in (stdout, stdout2, out.read_text()):
        assert PATIENT not in text and "DOE" not in text


def test_redactor_strips_third_party_paths_and_found_names(tmp_path):
    folder = tmp_path / PATIENT
    redact = Redactor([folder])
    redact.found(folder / "sub dir" / "x1.dcm", folder)
    text = (
        f"[Errno 2] No such file or directory: '{folder}/x1.dcm'; "
        f"File {folder / 'a.nii'} is not a gzip file; {PATIENT}: nothing; x1.dcm failed; "
        "/other/place/DOE.nii broken"
    )
    assert redact(text) == (
        "[Errno 2] No such file or directory: '<input 1>/<file>'; File <input 1>/a.nii is not a "
        "gzip file; <input 1>: nothing; <file> failed; <path> broken"
    )
    assert strip_paths("cannot read 'C:\\scans\\DOE\\1.dcm' or \"/a b/c\"") == (
        "cannot read '<path>' or \"<path>\""
    )


def test_an_output_that_starts_like_its_input_is_printed_as_chosen(tmp_path):
    folder = tmp_path / PATIENT
    out = tmp_path / f"{PATIENT}_out" / "results.csv"
    redact = Redactor([folder], keep=[out])

    assert redact(f"wrote {out} from {folder}") == f"wrote {out} from <input 1>"


def _error_line(code: int, stderr: str) -> str:
    assert code == 2 and stderr.count("\n") == 1 and "Traceback" not in stderr
    return stderr.strip()


def test_classify_output_is_checked_before_the_model_loads(capsys, tmp_path, patient_dir):
    (tmp_path / "afile").write_text("x")
    broken_model = tmp_path / "no_model_here"  # loading it would fail: the output fails first
    cases = [
        (tmp_path / "afile" / "r.json", "error: --out: 'afile' is a file, not a folder"),
        (
            tmp_path / ("n" * 300 + ".json"),
            "error: --out: a name of 305 characters is too long for this folder (at most 235)",
        ),
        (tmp_path, f"error: --out: '{tmp_path.name}' is a folder, not a results file"),
    ]
    for out, message in cases:
        if out == tmp_path:
            out = tmp_path / "folder.json"
            out.mkdir()
            message = "error: --out: 'folder.json' is a folder, not a results file"
        code, _, stderr = _run(
            capsys, "classify", patient_dir, "--model", broken_model, "--out", out
        )
        assert _error_line(code, stderr) == message


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_fails_first(capsys, tmp_path, patient_dir):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    code, _, stderr = _run(
        capsys, "classify", patient_dir, "--model", tmp_path / "x", "--out", locked / "r.json"
    )
    assert _error_line(code, stderr) == (
        "error: --out: the folder is not writable (permission denied or read-only)"
    )


def test_train_checks_name_and_folder_before_loading_anything(capsys, tmp_path):
    (tmp_path / "afile").write_text("x")
    missing = tmp_path / "no_cases.npz"  # loading would fail: the checks come first
    common = ["train", "--cases", missing, "--architecture", "cnn3d"]
    code, _, stderr = _run(capsys, *common, "--out", tmp_path / "m", "--name", "x" * 300)
    assert _error_line(code, stderr) == "error: --name has 300 characters; at most 100 are allowed"
    code, _, stderr = _run(capsys, *common, "--out", tmp_path / "afile" / "m")
    assert _error_line(code, stderr) == "error: --out: 'afile' is a file, not a folder"
    assert not (tmp_path / "m").exists()


def test_convert_checks_its_folder_first(capsys, tmp_path):
    (tmp_path / "afile").write_text("x")
    code, _, stderr = _run(capsys, "convert", tmp_path / "nothing", "--out", tmp_path / "afile")
    assert _error_line(code, stderr) == "error: --out: 'afile' is a file, not a folder"


def test_a_late_failure_keeps_the_rows_done(tmp_path, patient_dir, bundle_dir):
    out = tmp_path / "r.json"
    series = tmp_path / "two"
    for number in (1, 2):
        volume = make_ct_phantom(number, shape=(12, 24, 24), spacing=(5.0, 4.0, 4.0)).volume
        write_series(volume, series / f"s{number}", series_number=number)

    def interrupted(row: dict) -> None:
        if row["index"] == 2:
            raise KeyboardInterrupt  # killed while the second series was being reported

    with pytest.raises(KeyboardInterrupt):
        classify_paths(
            [series, patient_dir],
            bundle_dir,
            passes=0,
            on_row=interrupted,
            checkpoint=lambda report: write_report(report, out),
        )
    saved = json.loads(out.read_text())
    assert [row["index"] for row in saved["series"]] == [1, 2]
    for row in saved["series"]:  # both were classified (perhaps flagged out of distribution)
        assert sum(row["probabilities"].values()) == pytest.approx(1.0)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_stale_staging_is_cleaned_and_fresh_kept(tmp_path):
    old = time.time() - 2 * outputs.STALE_AFTER_S
    stale_dir = tmp_path / ".m-v1.abcdefgh.partial"
    stale_dir.mkdir()
    (stale_dir / "model.keras").write_bytes(b"half")
    stale_file = tmp_path / ".partial-1234.nii.gz"
    stale_file.write_bytes(b"half")
    fresh = tmp_path / ".r.json.zz.partial"
    fresh.write_text("another process is writing")
    mine = tmp_path / ".config"
    mine.write_text("not ours")
    for path in (stale_dir, stale_file, mine):
        os.utime(path, (old, old))

    assert outputs.clean_stale(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".config", ".r.json.zz.partial"]


def test_saved_bundles_and_results_have_the_usual_modes(tmp_path, bundle_dir):
    folder = save_bundle(tiny_bundle(), tmp_path / "m-v1")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o644}
    written = outputs.write_text_atomic(tmp_path / "x.csv", "a\n")
    assert stat.S_IMODE(written.stat().st_mode) == 0o644


@pytest.mark.timeout(300)
def test_a_named_pipe_is_skipped_not_waited_on(capsys, tmp_path, bundle_dir):
    folder = tmp_path / "with_pipe"
    volume = make_ct_phantom(0, shape=(12, 24, 24), spacing=(5.0, 4.0, 4.0)).volume
    write_series(volume, folder / "ct", series_number=2)
    os.mkfifo(folder / "ct" / "pipe.dcm")  # reading it would block until a writer comes

    code, stdout, stderr = _run(capsys, "series", folder, "--json")
    assert code == 0, stderr
    assert [info["shape"] for info in json.loads(stdout)] == [[12, 24, 24]]
    out = tmp_path / "r.json"
    code, _, stderr = _run(capsys, "classify", folder, "--model", bundle_dir, "--out", out)
    assert code == 0, stderr
    report = json.loads(out.read_text())
    place = file_positions(folder)[folder / "ct" / "pipe.dcm"]
    pipe = f"file {place}: it is a named pipe, not a file"
    assert report["skipped_files"] == [{"input": 1, "reason": pipe}]
    assert len(report["series"]) == 1 and report["series"][0]["predicted_class"]
    code, _, stderr = _run(capsys, "convert", folder, "--out", tmp_path / "nii")
    assert code == 0 and f"skipped a file of input 1: {pipe}" in stderr
    assert stat.S_IMODE((tmp_path / "nii" / "series_001_CT.nii.gz").stat().st_mode) == 0o644
