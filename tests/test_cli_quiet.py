"""A quiet, self-explaining command line: no TensorFlow log lines, shipped models by name, a
models listing, defaults in --help, a header on the series table, plain progress in logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from napari_scan_classifier._tensorflow_isolation import NATIVE_LOG_LINE
from napari_scan_classifier.cli import TrainingProgress, build_parser, main
from napari_scan_classifier.results import resolve_bundle
from napari_scan_classifier.samples import sample_ct_path
from napari_scan_classifier.training import TrainingEvent

TF_WORDS = ("tensorflow", "absl", "cuda", "onednn", "cpu_feature_guard", "xla")


@pytest.mark.slow
def test_classify_by_model_name_prints_no_tensorflow_logs(tmp_path: Path) -> None:
    """In a fresh process, as a user runs it: TensorFlow loads, probes devices and runs, and
    stderr holds none of its lines (CI sets TF_CPP_MIN_LOG_LEVEL; the user's shell does not)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "GRPC_"))}
    out = tmp_path / "results.json"
    command = [sys.executable, "-m", "napari_scan_classifier.cli", "classify"]
    args = [str(sample_ct_path()), "--model", "demo_ct_lesion", "--out", str(out), "--passes", "0"]

    run = subprocess.run([*command, *args], capture_output=True, text=True, env=env, check=False)

    assert run.returncode == 0, run.stderr
    noisy = [
        line
        for line in run.stderr.splitlines()
        if NATIVE_LOG_LINE.match(line.encode()) or any(w in line.lower() for w in TF_WORDS)
    ]
    assert noisy == []
    report = json.loads(out.read_text())
    assert report["model"]["name"] == "demo_ct_lesion"
    assert "1 of 1 series classified" in run.stdout


def test_native_log_lines_are_recognised() -> None:
    dropped = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796520072.680267    9597 port.cc:153] oneDNN custom operations are on.",
        "E0000 00:00:1796520095.941891   10215 cuda_platform.cc:52] failed call to cuInit",
    ]
    kept = ["error: no scan could be classified", "warning: #1 CT: 2 slices missing"]
    assert all(NATIVE_LOG_LINE.match(line.encode()) for line in dropped)
    assert not any(NATIVE_LOG_LINE.match(line.encode()) for line in kept)


def test_shipped_models_resolve_by_name() -> None:
    bundle = resolve_bundle("demo_ct_lesion")
    assert bundle.metadata.name == "demo_ct_lesion" and bundle.metadata.classes == [
        "normal",
        "lesion",
    ]


def test_models_lists_name_version_region_and_classes(tmp_path: Path, capsys) -> None:
    assert main(["models", "--folder", str(tmp_path)]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    shipped = resolve_bundle("demo_ct_lesion").metadata
    assert header.split() == ["name", "version", "modality", "region", "grid", "classes"]
    assert rows[0].split() == [
        "demo_ct_lesion",
        str(shipped.version),
        "CT",
        "abdomen",
        "x".join(map(str, shipped.input_shape)),
        "normal,",
        "lesion",
    ]


def test_help_shows_defaults() -> None:
    commands = build_parser()._subparsers._group_actions[0].choices
    assert "(default: 10)" in commands["classify"].format_help()  # --passes
    assert "(default: None)" not in commands["train"].format_help()


def test_series_table_has_a_header(capsys) -> None:
    assert main(["series", str(sample_ct_path())]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[:4] == ["series", "key", "modality", "number"]
    assert row.split()[1:5] == ["CT", "#1", "72x128x128", "1"]
    assert header.split()[5] == "frames"


def test_training_progress_in_a_log_is_plain_lines(capsys) -> None:
    progress = TrainingProgress()
    progress.terminal = False
    for done in range(1, 21):
        progress(TrainingEvent("load", 0, 2, done, 20))
    progress(TrainingEvent("batch", 1, 2, 1, 3, loss=0.7))
    progress(TrainingEvent("epoch", 1, 2, 3, 3, 0.69, 0.7, 0.5, 1))
    lines = capsys.readouterr().out.splitlines()
    assert lines[:10] == [f"loading cases {2 * k}/20" for k in range(1, 11)]
    assert lines[10].startswith("epoch 1/2 loss 0.6900 val_loss 0.7000 val_auc 0.500")
    assert len(lines) == 11


def test_counts_read_as_english() -> None:
    from napari_scan_classifier.datasets import n_cases

    assert [n_cases(n) for n in (0, 1, 2)] == ["0 cases", "1 case", "2 cases"]
