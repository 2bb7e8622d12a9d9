"""Damaged cases are quarantined; hostile case zips are refused before anything is written."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from napari_scan_classifier import cases, limits
from napari_scan_classifier.cases import INCOMING, CaseLibrary
from napari_scan_classifier.errors import CaseLibraryError
from napari_scan_classifier.volume import Volume

MiB = 1 << 20


def _volume(seed: int) -> Volume:
    voxels = np.random.default_rng(seed).integers(-1000, 2000, size=(4, 5, 6)).astype(np.int16)
    return Volume(voxels, np.diag([2.0, 1.0, 1.0, 1.0]), modality="CT")


def _written(root: Path) -> list[str]:
    """Everything in the library folder except the empty staging area."""
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.name != INCOMING or any(p.iterdir())
    )


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("[" * 50_000 + "]" * 50_000, "case.json: case.json is nested too deeply to be read"),
        ('{"case_id": ', "case.json: case.json is not valid JSON (Expecting value: line 1"),
        (b"\xff\xfe".decode("latin-1"), "case.json: case.json is not valid JSON ('utf-8' codec"),
        (" " * (2 * MiB), "case.json: case.json is implausibly large (more than 1.0 MiB)"),
        ("[1, 2]", "case.json"),
    ],
    ids=["deep", "invalid", "not utf-8", "oversized", "a list"],
)
def test_a_damaged_case_never_breaks_the_library(tmp_path, content, reason):
    library = CaseLibrary(tmp_path)
    good = library.add(_volume(1), "normal")
    bad = library.add(_volume(2), "lesion")
    (tmp_path / bad.case_id / cases.CASE_FILE).write_bytes(content.encode("latin-1"))

    assert library.list() == [good]
    assert library.counts() == {"normal": 1}
    (damaged,) = library.corrupt_cases()
    assert damaged.case_id == bad.case_id
    assert damaged.reason.startswith(f"case {bad.case_id} has an unreadable {reason}")
    added = library.add(_volume(3), "lesion")
    assert [r.case_id for r in library.list()] == [good.case_id, added.case_id]


def test_out_of_range_numbers_and_a_pipe_are_damage_too(tmp_path):
    library = CaseLibrary(tmp_path)
    good = library.add(_volume(1), "normal")
    huge = library.add(_volume(2), "lesion")
    piped = library.add(_volume(3), "lesion")
    data = json.loads((tmp_path / huge.case_id / cases.CASE_FILE).read_text())
    (tmp_path / huge.case_id / cases.CASE_FILE).write_text(
        json.dumps({**data, "spacing": [10**400, 1, 1]})
    )
    (tmp_path / piped.case_id / cases.CASE_FILE).unlink()
    os.mkfifo(tmp_path / piped.case_id / cases.CASE_FILE)  # a read would block forever

    assert library.list() == [good]
    reasons = {c.case_id: c.reason for c in library.corrupt_cases()}
    assert reasons == {
        huge.case_id: f"case {huge.case_id} has an unreadable case.json",
        piped.case_id: f"case {piped.case_id} has no case.json",
    }


def _exported(tmp_path: Path) -> tuple[Path, str]:
    source = CaseLibrary(tmp_path / "source")
    record = source.add(_volume(1), "lesion")
    return source.export_zip(tmp_path / "export.zip"), record.case_id


def test_a_case_zip_bomb_is_refused_before_writing(tmp_path):
    archive, _ = _exported(tmp_path)
    with zipfile.ZipFile(archive, "a", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{'ab' * 16}/volume.nii.gz", b"\0" * (100 * MiB))
    assert archive.stat().st_size < 200_000
    library = CaseLibrary(tmp_path / "target")

    with pytest.raises(CaseLibraryError) as caught:
        library.import_zip(archive)
    message = str(caught.value)
    assert message.startswith(f"export.zip: {'ab' * 16}/volume.nii.gz expands ")
    assert message.endswith(
        "to 100.0 MiB), more than the 100-fold a real file reaches: refused as a zip bomb"
    )
    assert _written(tmp_path / "target") == []


def test_a_case_zip_larger_than_the_budget_is_refused_with_its_size(tmp_path):
    archive, _ = _exported(tmp_path)
    with zipfile.ZipFile(archive, "a", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{'cd' * 16}/volume.nii.gz", os.urandom(3 * MiB))
    library = CaseLibrary(tmp_path / "target")
    limits.set_memory_budget(2 * MiB)
    try:
        with pytest.raises(CaseLibraryError) as caught:
            library.import_zip(archive)
    finally:
        limits.set_memory_budget(None)
    assert str(caught.value) == (
        f"export.zip: {'cd' * 16}/volume.nii.gz expands to 3.0 MiB, more than the limit of "
        "2.0 MiB (set NAPARI_SCAN_CLASSIFIER_MEMORY_BUDGET to change it)"
    )
    assert _written(tmp_path / "target") == []


def test_a_case_zip_larger_than_the_free_disk_is_refused(tmp_path, monkeypatch):
    archive, _ = _exported(tmp_path)
    library = CaseLibrary(tmp_path / "target")
    free = limits.free_disk(tmp_path)
    monkeypatch.setattr(cases.exchange, "_DISK_RESERVE_BYTES", free)  # as if the disk were full
    with pytest.raises(CaseLibraryError, match=r"^export\.zip expands to .* more than the 0 bytes"):
        library.import_zip(archive)
    assert _written(tmp_path / "target") == []


def test_encrypted_and_damaged_case_zips(tmp_path):
    archive, case_id = _exported(tmp_path)
    raw = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo(f"{case_id}/case.json")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw[start : start + 8] = b"\xff" * 8
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(bytes(raw))
    central = raw.index(b"PK\x01\x02")
    raw[central + 8] |= 0x1  # the first member claims to be encrypted
    encrypted = tmp_path / "encrypted.zip"
    encrypted.write_bytes(bytes(raw))
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(archive.read_bytes()[:-10])
    library = CaseLibrary(tmp_path / "target")

    result = library.import_zip(damaged)
    assert result.imported == []
    (skipped,) = result.skipped
    assert skipped.startswith(
        f"case {case_id}: case.json is damaged (Error -3 while decompressing data"
    )
    with pytest.raises(CaseLibraryError, match=r"^encrypted\.zip: [0-9a-f]{32}/\S+ is encrypted$"):
        library.import_zip(encrypted)
    with pytest.raises(CaseLibraryError) as caught:
        library.import_zip(truncated)
    assert str(caught.value).startswith("truncated.zip is not a readable zip file (")
    assert str(tmp_path) not in str(caught.value)
    assert _written(tmp_path / "target") == []


def _npy_declaring(shape: tuple[int, ...]) -> bytes:
    """An .npy file whose header declares ``shape`` (uint8) but that holds 16 bytes."""
    import io

    buffer = io.BytesIO()
    header = {"descr": "|u1", "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + b"\0" * 16


def test_training_npz_declaring_huge_arrays_is_refused_before_loading(tmp_path):
    from napari_scan_classifier.datasets import load_npz
    from napari_scan_classifier.errors import TrainingError

    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("train_images.npy", _npy_declaring((65535, 65535, 100000)))
        zf.writestr("train_labels.npy", _npy_declaring((4,)))
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("train_images.npy", _npy_declaring((1,)) + b"\0" * (100 * MiB))
    limits.set_memory_budget(64 * MiB)
    try:
        with pytest.raises(TrainingError) as huge:
            load_npz(path)
        with pytest.raises(TrainingError) as expanding:
            load_npz(bomb)
    finally:
        limits.set_memory_budget(None)
    assert str(huge.value) == (
        "the input (training data) would need 390.6 TiB of memory, more than the budget of "
        "64.0 MiB (set NAPARI_SCAN_CLASSIFIER_MEMORY_BUDGET to change it)"
    )
    assert str(expanding.value) == (
        "the input (training data): train_images.npy expands to 100.0 MiB, more than the limit "
        "of 64.0 MiB (set NAPARI_SCAN_CLASSIFIER_MEMORY_BUDGET to change it)"
    )


@pytest.mark.timeout(60)
def test_training_data_that_is_a_pipe_is_refused_not_waited_on(tmp_path):
    from napari_scan_classifier.datasets import load_npz
    from napari_scan_classifier.errors import TrainingError

    os.mkfifo(tmp_path / "cases.npz")
    with pytest.raises(TrainingError) as caught:
        load_npz(tmp_path / "cases.npz")
    assert str(caught.value) == (
        "the input (training data) cannot be read: it is a named pipe, not a file"
    )
