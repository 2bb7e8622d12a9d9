"""Cohorts: ``classify`` in this process and on real Dask clusters (local processes, and a
scheduler and worker started as separate commands), resumed after a kill, surviving a dead worker.

A tiny untrained model and small generated CT series keep it quick: the checks are about where the
work runs and that every series ends up in the results exactly once, with the same numbers.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from model_fixtures import CLASSES, tiny_bundle

import napari_scan_classifier
from napari_scan_classifier.cli import main
from napari_scan_classifier.cohort import (
    CohortProgress,
    Journal,
    Options,
    classify_cohort,
    expand_inputs,
    file_key,
    model_sha256,
)
from napari_scan_classifier.errors import ScanClassifierError, UnreadableScanError
from napari_scan_classifier.io import load_scans
from napari_scan_classifier.io.dicom import list_series, read_headers, series_files
from napari_scan_classifier.io.dicom_write import write_series
from napari_scan_classifier.io.nifti import save_nifti
from napari_scan_classifier.models import load_bundle, save_bundle
from napari_scan_classifier.phantoms import make_ct_phantom
from napari_scan_classifier.results import ANSWERED

SERIES = 6
SRC = str(Path(napari_scan_classifier.__file__).parents[1])  # workers import this copy
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")])),
}


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_bundle(tiny_bundle(), tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SERIES CT series (their own UIDs), one folder each, under one folder."""
    root = tmp_path_factory.mktemp("cohort")
    for number in range(1, SERIES + 1):
        volume = make_ct_phantom(number, shape=(12, 32, 32), spacing=(5.0, 5.0, 5.0)).volume
        write_series(volume, root / f"study{number:02d}", series_number=number)
    return root


@pytest.fixture(scope="module")
def broken_nifti(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A NIfTI file cut in half (as by a failed copy): it fails where it is read, on a worker."""
    volume = make_ct_phantom(0, shape=(8, 16, 16)).volume
    path = save_nifti(volume, tmp_path_factory.mktemp("bad") / "patient_doe.nii.gz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _journal(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]


def _keys(cohort_dir: Path) -> set[str]:
    return {info.key for info in list_series(cohort_dir)}


def _probabilities(rows: list[dict]) -> dict[str, dict[str, float]]:
    return {r["series_key"]: r["probabilities"] for r in rows if r["status"] in ANSWERED}


def _dask(*argv: str) -> subprocess.Popen:
    """``dask ...`` (the command of this interpreter), dashboard off, quiet."""
    command = [sys.executable, "-m", "dask", *argv, "--no-dashboard"]
    return subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _cli(*argv: object) -> int:
    return main([str(a) for a in argv])


# ------------------------------------------------------------------------------- fast parts


def test_journal_drops_a_line_cut_short_by_a_kill(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"series_key": "a", "index": 1}\n{"series_key": "b", "ind')
    journal = Journal(path)

    assert journal.rows() == [{"series_key": "a", "index": 1}]
    journal.append({"series_key": "c", "index": 3})
    assert [row["series_key"] for row in journal.rows()] == ["a", "c"]
    assert path.read_text().count("\n") == 2


def test_a_damaged_journal_is_refused_without_its_name(tmp_path: Path) -> None:
    path = tmp_path / "Doe_Jane.jsonl"  # beside an --out named after a patient
    path.write_bytes(b"\xff not json\n")

    with pytest.raises(ScanClassifierError) as refused:
        Journal(path).rows()

    assert str(refused.value) == (
        "the results journal beside --out (its .jsonl file) is not a results journal of this "
        "program ('utf-8' codec can't decode byte 0xff in position 0: invalid start byte); "
        "choose another --out"
    )


def test_list_file_paths_are_relative_to_it_and_missing_ones_named(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b.nii").write_bytes(b"")
    listing = tmp_path / "cohort.txt"
    listing.write_text(f"# query of 2026-12-01\na\n\n{tmp_path / 'b.nii'}\n")

    assert expand_inputs([f"@{listing}", tmp_path / "a"]) == [
        tmp_path / "a",
        tmp_path / "b.nii",
        tmp_path / "a",
    ]
    listing.write_text("a\nno_such_study\n")
    with pytest.raises(UnreadableScanError, match=r"^input 2: no such file or folder$"):
        expand_inputs([f"@{listing}"])


def test_headers_read_elsewhere_in_batches_find_the_same_series_and_skipped_files(
    tmp_path: Path,
) -> None:
    """As on a cluster: batches of files go out (pickled), their headers come back (pickled)."""
    for number in (1, 2):
        volume = make_ct_phantom(number, shape=(4, 16, 16), spacing=(5.0, 5.0, 5.0)).volume
        write_series(volume, tmp_path / f"study{number}", series_number=number)
    (tmp_path / "study1" / "notes.txt").write_text("not an image")
    sizes: list[int] = []

    def elsewhere(items: list[tuple[int, Path]]):
        for start in range(0, len(items), 3):
            batch = pickle.loads(pickle.dumps(items[start : start + 3]))
            sizes.append(len(batch))
            yield from pickle.loads(pickle.dumps(read_headers(batch)))

    here, skipped_here = series_files(tmp_path)
    there, skipped_there = series_files(tmp_path, reader=elsewhere)

    assert sizes == [3, 3, 3]  # 8 slices and the text file
    assert len(there) == 2 and there == here
    assert [(s.position, s.reason) for s in skipped_there] == [
        (s.position, s.reason) for s in skipped_here
    ]
    assert [s.position for s in skipped_there] == [5]


def test_plain_progress_lines_count_done_failures_rate_and_time_left() -> None:
    stream = io.StringIO()  # not a terminal: lines, no bar
    progress = CohortProgress(total=4, done=1, stream=stream, interval=1e-9)
    progress.update({"status": "classified"})
    progress.update({"status": "failed"})
    progress.close()

    first, second = stream.getvalue().splitlines()
    assert first.startswith("2/4 series (0 failed), ") and first.endswith(" left")
    assert second.startswith("3/4 series (1 failed), ") and " series/min, " in second


@pytest.mark.slow
def test_list_input_and_resume_in_process(
    tmp_path: Path, cohort_dir: Path, bundle_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second run with more inputs classifies only the new series; rows say where they ran
    and with which bundle (hash of its files)."""
    folders = sorted(cohort_dir.iterdir())
    listing = tmp_path / "cohort.txt"
    listing.write_text("\n".join(str(f) for f in folders[:3]) + "\n")
    out = tmp_path / "new_folder" / "results.json"

    assert _cli("classify", f"@{listing}", "--model", bundle_dir, "--out", out, "--passes", 0) == 0
    first = _journal(out)
    assert [row["index"] for row in first] == [1, 2, 3]
    assert {row["worker"] for row in first} == {"in-process"}
    assert all(row["timings"]["load"] > 0 for row in first)
    sha256 = model_sha256(load_bundle(bundle_dir))
    assert sha256 == hashlib.sha256((bundle_dir / "model.keras").read_bytes()).hexdigest()
    assert {json.dumps(row["bundle"]) for row in first} == {
        json.dumps({"name": "sphere-test", "version": 1, "sha256": sha256})
    }

    more = [f"@{listing}", *folders[3:]]
    assert _cli("classify", *more, "--model", bundle_dir, "--out", out, "--passes", 0) == 0

    rows = _journal(out)
    assert rows[:3] == first
    assert [row["index"] for row in rows] == list(range(1, SERIES + 1))
    assert {row["series_key"] for row in rows} == _keys(cohort_dir)
    summary = json.loads(out.read_text())
    assert [row["series_key"] for row in summary["series"]] == [r["series_key"] for r in rows]
    assert summary["model"]["sha256"] == sha256
    assert f"wrote {out} ({SERIES} of {SERIES} series classified; 3 from an earlier run)" in (
        capsys.readouterr().out
    )


def test_a_results_file_used_again_for_other_inputs_holds_only_theirs_and_answers_are_printed(
    tmp_path: Path,
    cohort_dir: Path,
    bundle_dir: Path,
    broken_nifti: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first, second = sorted(cohort_dir.iterdir())[:2]
    out = tmp_path / "results.json"
    assert _cli("classify", first, "--model", bundle_dir, "--out", out, "--passes", 0) == 0
    capsys.readouterr()

    again = ("classify", second, broken_nifti, "--model", bundle_dir, "--out", out)
    assert _cli(*again, "--passes", 0) == 0

    rows = json.loads(out.read_text())["series"]
    assert [row["status"] for row in rows] == ["classified", "failed"]
    assert rows[0]["series_key"] == list_series(second)[0].key
    printed = capsys.readouterr()
    assert f"wrote {out} (1 of 2 series classified, 1 failed (the reasons are in the results))" in (
        printed.out
    )
    answered, broken = (row["series"] for row in rows)
    assert f"{answered}: {rows[0]['predicted_class']}\n" in printed.err
    assert f"{broken}: not classified\n" in printed.err
    assert f"warning: {broken}: {rows[1]['error']}\n" in printed.err


def test_a_folder_of_nifti_files_and_dicom_series_is_one_cohort(
    tmp_path: Path, cohort_dir: Path, bundle_dir: Path, broken_nifti: Path
) -> None:
    folder = tmp_path / "DOE_JANE"
    scans = [folder / "nifti" / f"DOE_{n}.nii.gz" for n in (1, 2)]
    for number, path in enumerate(scans, start=1):
        save_nifti(make_ct_phantom(number, shape=(12, 32, 32)).volume, path)
    (folder / "nifti" / "cut.nii.gz").write_bytes(broken_nifti.read_bytes())
    dicom = sorted(cohort_dir.iterdir())[0]
    write_series(load_scans(dicom).volumes[0], folder / "dicom", series_number=1)

    result = classify_cohort([folder], bundle_dir, tmp_path / "r.json", options=Options(passes=0))

    rows = json.loads((tmp_path / "r.json").read_text())["series"]
    assert result.total == 4 and result.failed == 1
    expected = [_keys(folder / "dicom").pop(), *(file_key(p) for p in [*scans, broken_nifti])]
    assert [row["series_key"] for row in rows] == expected  # DICOM first, then files by name
    alone = classify_cohort(scans[:1], bundle_dir, tmp_path / "a.json", options=Options(passes=0))
    assert alone.total == 1
    (single,) = json.loads((tmp_path / "a.json").read_text())["series"]
    by_key = {row["series_key"]: row for row in rows}
    assert by_key[single["series_key"]]["probabilities"] == single["probabilities"]
    assert by_key[file_key(broken_nifti)]["status"] == "failed"
    assert "DOE" not in json.dumps(rows)


@pytest.mark.slow
def test_resuming_with_another_model_is_refused(
    tmp_path: Path, cohort_dir: Path, bundle_dir: Path
) -> None:
    out = tmp_path / "results.csv"
    other = tiny_bundle(name="other")  # seeded like the first: its weights made to differ
    other.model.set_weights([w + 0.01 for w in other.model.get_weights()])
    other = save_bundle(other, tmp_path / "other")
    first = sorted(cohort_dir.iterdir())[0]
    classify_cohort([first], bundle_dir, out, options=Options(passes=0))

    with pytest.raises(ScanClassifierError) as refused:
        classify_cohort([first], other, out, options=Options(passes=0))
    ours = model_sha256(load_bundle(bundle_dir))
    assert str(refused.value) == (
        "the results journal beside --out (its .jsonl file) holds results of another model "
        f"(SHA-256 {ours[:12]}); choose another --out to classify with other v1"
    )


# ---------------------------------------------------------------------- on Dask clusters


@pytest.mark.slow
def test_two_workers_match_in_process_survive_a_killed_worker_and_record_a_broken_series(
    tmp_path: Path,
    cohort_dir: Path,
    broken_nifti: Path,
    bundle_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--workers 2`` gives the in-process probabilities even though the process of the worker
    that starts the last series (when both have done some) is killed: it runs again elsewhere."""
    local, dask = tmp_path / "local.json", tmp_path / "dask.csv"
    common = [broken_nifti, cohort_dir, "--model", bundle_dir, "--saliency-dir", tmp_path]
    common += ["--method", "gradcam"]
    assert _cli("classify", *common, "--out", local) == 0
    victim = max(_journal(local), key=lambda row: row["index"])["series_key"]
    kills = _kill_workers_starting(monkeypatch, tmp_path / "kills", {victim}, times=1)

    code = _cli("classify", *common, "--out", dask, "--workers", 2)

    assert code == 0
    ((killed_address, killed_key),) = _read_kills(kills)
    assert killed_key.endswith(victim)
    rows = _journal(dask)
    assert len(rows) == SERIES + 1
    (broken,) = [row for row in rows if row["status"] not in ANSWERED]
    assert broken["index"] == 1 and broken["status"] == "failed"
    assert broken["error"] == "<input 1>: voxel data is truncated or corrupt"
    assert {row["series_key"] for row in rows} - {broken["series_key"]} == _keys(cohort_dir)
    workers = {row["worker"] for row in rows}
    assert len(workers) >= 2 and all(w.startswith("tcp://127.0.0.1:") for w in workers)
    (rerun,) = [row for row in rows if row["series_key"] == victim]
    assert rerun["status"] in ANSWERED and rerun["worker"] != killed_address
    expected = _probabilities(_journal(local))
    found = _probabilities(rows)
    assert found.keys() == expected.keys() and len(found) == SERIES
    for key, probabilities in found.items():
        for name in CLASSES:
            assert probabilities[name] == pytest.approx(expected[key][name], abs=1e-6)
    csv_lines = dask.read_text().splitlines()
    assert len(csv_lines) == 1 + SERIES + 1 and "worker" in csv_lines[0].split(",")


@pytest.mark.slow
def test_a_series_whose_worker_dies_twice_is_recorded_and_the_rest_finish(
    tmp_path: Path, cohort_dir: Path, bundle_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every worker that starts one series is killed: it runs twice (once retried), then is
    recorded as failed with the reason, and the other series are classified."""
    deadly, other = sorted(cohort_dir.iterdir())[:2]
    out = tmp_path / "results.json"
    kills = _kill_workers_starting(monkeypatch, tmp_path / "kills", _keys(deadly), times=None)

    code = _cli("classify", deadly, other, "--model", bundle_dir, "--out", out, "--workers", 2)

    assert code == 0
    killed = _read_kills(kills)
    assert len(killed) == 2 and len({address for address, _ in killed}) == 2
    rows = {row["series_key"]: row for row in _journal(out)}
    assert rows.keys() == _keys(deadly) | _keys(other)
    (dead,) = [rows[key] for key in _keys(deadly)]
    assert dead["status"] == "failed" and dead["worker"] is None
    assert dead["error"] == "the worker running it died twice (out of memory?)"
    assert all(rows[key]["status"] in ANSWERED for key in _keys(other))


def _kill_workers_starting(
    monkeypatch: pytest.MonkeyPatch, record: Path, series_keys: set[str], times: int | None
) -> Path:
    """Make each worker of the command's cluster SIGKILL its own process as it starts the task
    of one of ``series_keys`` (the first ``times`` such starts; None: every one), after writing
    its address and the task's key to ``record``. Decided inside the worker, so no task can
    finish before the kill lands, however fast the machine."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class KillOnStart(WorkerPlugin):
        def setup(self, worker: Any) -> None:
            self.address = worker.address

        def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
            if finish != "executing" or not any(str(key).endswith(k) for k in series_keys):
                return
            if times is not None and _line_count(record) >= times:
                return
            with record.open("a") as kills:
                kills.write(f"{self.address}\t{key}\n")
            os.kill(os.getpid(), signal.SIGKILL)

    from napari_scan_classifier.cohort import run

    start_cluster = run._cluster

    @contextmanager
    def cluster_with_killer(*args: Any, **kwargs: Any) -> Iterator[Any]:
        with start_cluster(*args, **kwargs) as client:
            client.register_plugin(KillOnStart())
            yield client

    monkeypatch.setattr(run, "_cluster", cluster_with_killer)
    return record


def _line_count(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _read_kills(record: Path) -> list[tuple[str, str]]:
    """(worker address, task key) of each kill, in order."""
    return [tuple(line.split("\t")) for line in record.read_text().splitlines()]


@pytest.mark.slow
def test_killed_client_resumes_without_duplicates(
    tmp_path: Path, cohort_dir: Path, bundle_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL the command once some rows are written; the same command then finishes."""
    out = tmp_path / "results.json"
    journal = out.with_suffix(".jsonl")
    command = [sys.executable, "-m", "napari_scan_classifier.cli", "classify", str(cohort_dir)]
    command += ["--model", str(bundle_dir), "--out", str(out), "--saliency-dir", str(tmp_path)]
    command += ["--method", "gradcam"]
    run = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while run.poll() is None and (not journal.exists() or not journal.read_bytes()):
            time.sleep(0.01)
        run.send_signal(signal.SIGKILL)
    finally:
        run.wait()
    written = journal.read_text().count("\n")
    assert run.returncode == -signal.SIGKILL and 1 <= written < SERIES
    assert not out.exists()

    assert main(command[3:]) == 0  # the same command, resumed (here, to spare a start)

    rows = _journal(out)
    assert sorted(row["series_key"] for row in rows) == sorted(_keys(cohort_dir))
    assert [row["index"] for row in json.loads(out.read_text())["series"]] == list(
        range(1, SERIES + 1)
    )
    assert f"{written} from an earlier run" in capsys.readouterr().out


@pytest.mark.slow
def test_scheduler_and_worker_started_as_commands(
    tmp_path: Path, cohort_dir: Path, bundle_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The path a cluster user takes: `dask scheduler`, `dask worker`, then `--scheduler`."""
    from distributed import Client

    address_file = tmp_path / "scheduler.json"
    scheduler = ["--host", "127.0.0.1", "--port", "0", "--scheduler-file", str(address_file)]
    worker = ["--scheduler-file", str(address_file), "--host", "127.0.0.1", "--nthreads", "1"]
    started = [_dask("scheduler", *scheduler)]
    try:
        while not address_file.exists():
            assert started[0].poll() is None, "the scheduler did not start"
            time.sleep(0.1)
        started.append(_dask("worker", *worker))
        with Client(scheduler_file=str(address_file), timeout=120) as client:
            client.wait_for_workers(1, timeout=300)
            address = client.scheduler.address
        out = tmp_path / "results.json"

        two = sorted(cohort_dir.iterdir())[:2]

        code = _cli("classify", *two, "--model", bundle_dir, "--out", out, "--scheduler", address)

        assert code == 0
        rows = _journal(out)
        assert sorted(row["series_key"] for row in rows) == sorted(_keys(two[0]) | _keys(two[1]))
        assert all(row["status"] in ANSWERED for row in rows)
        assert all(row["worker"].startswith("tcp://127.0.0.1:") for row in rows)
        assert "Dask dashboard: " in capsys.readouterr().err
    finally:
        for process in reversed(started):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
