"""Hostile bundles: zip bombs, huge grids, encrypted or damaged members, deep JSON.

Each is refused with an InvalidBundleError naming the part inside the bundle (never the machine
path) and giving the size, before anything large is allocated.
"""

from __future__ import annotations

import json
import tracemalloc
import zipfile
from pathlib import Path

import keras
import pytest

from napari_scan_classifier import limits
from napari_scan_classifier.errors import InvalidBundleError, ScanClassifierError
from napari_scan_classifier.models.architectures import build_cnn3d
from napari_scan_classifier.models.bundle import Bundle, BundleMetadata, load_bundle, save_bundle

SHAPE = (8, 8, 8)
MiB = 1 << 20


def metadata(**changes: object) -> dict:
    fields = {
        "name": "guard-test",
        "version": 1,
        "classes": ["a", "b"],
        "modality": "CT",
        "task": "volume",
        "input_shape": SHAPE,
        "target_spacing_mm": None,
        "intensity": {"kind": "ct_window", "center": 40, "width": 400},
        "architecture": "cnn3d",
    }
    return BundleMetadata(**{**fields, **changes}).to_dict()


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory) -> bytes:
    keras.utils.set_random_seed(0)
    model = build_cnn3d((*SHAPE, 1), 2, width=2)
    folder = save_bundle(
        Bundle(BundleMetadata(**_fields(metadata())), model), tmp_path_factory.mktemp("b") / "m"
    )
    return (folder / "model.keras").read_bytes()


def _fields(data: dict) -> dict:
    return {k: v for k, v in data.items() if k != "format_version"}


def bundle_zip(path: Path, members: dict[str, bytes | tuple[bytes, int]]) -> Path:
    """A zip of ``members``: name -> bytes (deflated) or (bytes, compression)."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, content in members.items():
            data, method = (
                content if isinstance(content, tuple) else (content, zipfile.ZIP_DEFLATED)
            )
            zf.writestr(name, data, compress_type=method)
    return path


def mark_encrypted(path: Path, member: str) -> None:
    """Set the 'encrypted' flag of ``member`` in the central directory (zipfile cannot)."""
    raw = bytearray(path.read_bytes())
    start = raw.index(b"PK\x01\x02")
    while True:
        name_length = int.from_bytes(raw[start + 28 : start + 30], "little")
        if raw[start + 46 : start + 46 + name_length] == member.encode():
            raw[start + 8] |= 0x1
            break
        start = raw.index(b"PK\x01\x02", start + 4)
    path.write_bytes(bytes(raw))


def _json(data: object) -> bytes:
    return json.dumps(data).encode()


@pytest.fixture
def budget():
    limits.set_memory_budget(64 * MiB)
    yield 64 * MiB
    limits.set_memory_budget(None)


def test_a_zip_bomb_is_refused_before_it_expands(tmp_path, model_bytes):
    bomb = bundle_zip(
        tmp_path / "bomb.zip",
        {"bundle.json": _json(metadata()), "model.keras": b"\0" * (200 * MiB)},
    )
    assert bomb.stat().st_size < 400_000
    tracemalloc.start()
    with pytest.raises(InvalidBundleError) as caught:
        load_bundle(bomb)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert str(caught.value).startswith("Model bundle 'bomb.zip' cannot be used: model.keras ")
    assert "expands 1" in str(caught.value) and "-fold" in str(caught.value)
    assert "to 200.0 MiB), more than the 100-fold a real file reaches" in str(caught.value)
    assert peak < 8 * MiB  # nothing near the 200 MiB it declares was allocated


def test_a_member_over_the_budget_is_refused_with_its_size(tmp_path, budget):
    big = bundle_zip(
        tmp_path / "big.zip",
        {
            "bundle.json": _json(metadata()),
            "model.keras": (bytes(range(256)) * (80 * MiB // 256), zipfile.ZIP_STORED),
        },
    )
    with pytest.raises(InvalidBundleError) as caught:
        load_bundle(big)
    assert str(caught.value) == (
        "Model bundle 'big.zip' cannot be used: model.keras expands to 80.0 MiB, more than the "
        "limit of 64.0 MiB (set NAPARI_SCAN_CLASSIFIER_MEMORY_BUDGET to change it)"
    )


def test_a_huge_model_grid_is_refused_before_allocating(tmp_path, model_bytes, budget):
    folder = tmp_path / "grid"
    folder.mkdir()
    (folder / "bundle.json").write_bytes(_json({**metadata(), "input_shape": [4096] * 3}))
    (folder / "model.keras").write_bytes(model_bytes)
    tracemalloc.start()
    with pytest.raises(InvalidBundleError) as caught:
        load_bundle(folder)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert str(caught.value) == (
        "Model bundle 'grid' cannot be used: bundle.json: the input grid 4096 x 4096 x 4096 "
        "would need 4.2 TiB of memory, more than the budget of 64.0 MiB "
        "(set NAPARI_SCAN_CLASSIFIER_MEMORY_BUDGET to change it)"
    )
    assert peak < 8 * MiB


@pytest.mark.parametrize(
    ("member", "message"),
    [
        ("bundle.json", "bundle.json is encrypted"),
        ("model.keras", "model.keras is encrypted"),
    ],
)
def test_encrypted_members_are_refused(tmp_path, model_bytes, member, message):
    path = bundle_zip(
        tmp_path / "enc.zip", {"bundle.json": _json(metadata()), "model.keras": model_bytes}
    )
    mark_encrypted(path, member)
    with pytest.raises(
        InvalidBundleError, match=f"^Model bundle 'enc.zip' cannot be used: {message}$"
    ):
        load_bundle(path)


def test_unsupported_compression_is_refused(tmp_path, model_bytes):
    path = bundle_zip(
        tmp_path / "lzma.zip",
        {"bundle.json": (_json(metadata()), zipfile.ZIP_LZMA), "model.keras": model_bytes},
    )
    with pytest.raises(InvalidBundleError) as caught:
        load_bundle(path)
    assert str(caught.value) == (
        "Model bundle 'lzma.zip' cannot be used: bundle.json uses an unsupported compression "
        "method (14)"
    )


def test_damaged_deflate_data_is_a_bundle_error(tmp_path, model_bytes):
    path = bundle_zip(
        tmp_path / "damaged.zip", {"bundle.json": _json(metadata()), "model.keras": model_bytes}
    )
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("bundle.json")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw[start : start + 8] = b"\xff" * 8  # a deflate block type that does not exist
    path.write_bytes(bytes(raw))
    with pytest.raises(InvalidBundleError) as caught:
        load_bundle(path)
    assert str(caught.value).startswith(
        "Model bundle 'damaged.zip' cannot be used: bundle.json is damaged (Error -3 while "
        "decompressing data"
    )


def test_a_truncated_zip_is_a_bundle_error(tmp_path, model_bytes):
    path = bundle_zip(
        tmp_path / "cut.zip", {"bundle.json": _json(metadata()), "model.keras": model_bytes}
    )
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(InvalidBundleError) as caught:
        load_bundle(path)
    assert (
        str(caught.value) == "Model bundle 'cut.zip' cannot be used: it is not a readable zip file"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "bundle.json is nested too deeply to be read"),
        ('{"name": "x", ', "bundle.json is not valid JSON (Expecting property name enclosed"),
        ("\udcff", "bundle.json is not valid JSON ('utf-8' codec can't decode byte 0xff"),
    ],
    ids=["deep", "invalid", "not utf-8"],
)
def test_unreadable_bundle_json_is_a_bundle_error(tmp_path, model_bytes, text, message):
    path = bundle_zip(
        tmp_path / "j.zip",
        {"bundle.json": text.encode("utf-8", "surrogateescape"), "model.keras": model_bytes},
    )
    with pytest.raises(InvalidBundleError) as caught:
        load_bundle(path)
    assert str(caught.value).startswith(f"Model bundle 'j.zip' cannot be used: {message}")


def test_wrong_field_types_are_a_bundle_error(tmp_path, model_bytes):
    path = bundle_zip(
        tmp_path / "t.zip",
        {"bundle.json": _json({**metadata(), "intensity": [1, 2]}), "model.keras": model_bytes},
    )
    with pytest.raises(InvalidBundleError) as caught:
        load_bundle(path)
    assert str(caught.value) == (
        "Model bundle 't.zip' cannot be used: intensity: intensity kind must be one of "
        "('ct_window', 'zscore', 'percentile'), got None"
    )


def test_a_bomb_inside_model_keras_is_refused(tmp_path):
    inner = tmp_path / "inner.zip"
    bundle_zip(inner, {"config.json": b"{}", "model.weights.h5": b"\0" * (50 * MiB)})
    folder = tmp_path / "nested"
    folder.mkdir()
    (folder / "bundle.json").write_bytes(_json(metadata()))
    (folder / "model.keras").write_bytes(inner.read_bytes())
    with pytest.raises(InvalidBundleError) as caught:
        load_bundle(folder)
    assert "model.keras/model.weights.h5 expands " in str(caught.value)
    assert "refused as a zip bomb" in str(caught.value)


def test_the_budget_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(limits.BUDGET_ENV, "8G")
    assert limits.memory_budget() == 8 << 30
    monkeypatch.setenv(limits.BUDGET_ENV, "1500000")
    assert limits.memory_budget() == 1_500_000
    monkeypatch.setenv(limits.BUDGET_ENV, "lots")
    with pytest.raises(ScanClassifierError, match="'lots' is not a size"):
        limits.memory_budget()
    monkeypatch.delenv(limits.BUDGET_ENV)
    available = limits.psutil.virtual_memory().available
    assert abs(limits.memory_budget() - available // 2) < available // 10


def test_messages_do_not_quote_machine_paths(tmp_path):
    folder = tmp_path / "DOE^JOHN_1234"
    folder.mkdir()
    path = folder / "b.zip"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(InvalidBundleError) as caught:
        load_bundle(path)
    assert "DOE^JOHN" not in str(caught.value) and str(tmp_path) not in str(caught.value)
