"""Property-based fuzzing of model bundles and case zips (fixed seeds, small budgets).

The contract: whatever the bytes, loading gives a documented error (the package's error family)
or a correct result (the model answers as the intact one does, the cases hold the original
voxels and labels); never another exception. ``benchmarks/fuzz_bundles_cases.py`` runs many more
mutants, in worker processes that also catch hangs and memory blow-ups.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from model_fixtures import tiny_bundle

from napari_scan_classifier.cases import CaseLibrary
from napari_scan_classifier.errors import ScanClassifierError
from napari_scan_classifier.models import load_bundle, save_bundle
from napari_scan_classifier.volume import Volume

GRID = (8, 8, 8)
FUZZ = settings(
    derandomize=True,
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)
FLIPS = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=6)


@pytest.fixture(scope="module")
def intact(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An intact bundle (folder and zip), the model's answer to a probe, and a case zip."""
    root = tmp_path_factory.mktemp("intact")
    bundle = tiny_bundle(grid=GRID)
    probe = np.random.default_rng(0).random((1, *GRID, 1), dtype=np.float32)
    library = CaseLibrary(root / "library")
    rng = np.random.default_rng(1)
    voxels = {}
    for label in ("normal", "lesion"):
        voxels[label] = rng.integers(-1000, 2000, size=(4, 5, 6)).astype(np.int16)
        library.add(Volume(voxels[label], np.diag([2.0, 1.0, 1.5, 1.0]), modality="CT"), label)
    return {
        "folder": save_bundle(bundle, root / "bundle"),
        "zip": save_bundle(bundle, root / "bundle.zip").read_bytes(),
        "probe": probe,
        "answer": bundle.model.predict(probe, verbose=0)["volume"],
        "cases": library.export_zip(root / "cases.zip").read_bytes(),
        "voxels": voxels,
    }


def _flipped(raw: bytes, flips: list[tuple[float, int]], cut: float | None) -> bytes:
    data = bytearray(raw)
    for where, value in flips:
        data[int(where * len(data))] = value
    return bytes(data[: int(cut * len(data))] if cut is not None else data)


def _headers_changed(raw: bytes, entry: int, field: str, value: int) -> bytes:
    """Change one field of one central-directory entry (flags, compression, sizes)."""
    data = bytearray(raw)
    starts, at = [], data.find(b"PK\x01\x02")
    while at >= 0:
        starts.append(at)
        at = data.find(b"PK\x01\x02", at + 4)
    start = starts[entry % len(starts)]
    offset, width = {"flags": (8, 2), "method": (10, 2), "size": (24, 4)}[field]
    data[start + offset : start + offset + width] = (value % 256**width).to_bytes(width, "little")
    return bytes(data)


ZIP_DAMAGE = st.one_of(
    st.tuples(st.just("bytes"), FLIPS, st.none() | st.floats(0, 1)),
    st.tuples(
        st.just("header"),
        st.integers(0, 20),
        st.sampled_from(["flags", "method", "size"]),
        st.sampled_from([1, 9, 12, 14, 99, 0, 2**31, 2**32 - 1]),
    ),
)


def _damaged(raw: bytes, damage: tuple) -> bytes:
    if damage[0] == "bytes":
        return _flipped(raw, damage[1], damage[2])
    return _headers_changed(raw, *damage[1:])


def _loads_correctly_or_refuses(path: Path, intact: dict) -> dict | None:
    """The bundle's metadata as loaded, or None when it was refused with a documented error."""
    try:
        bundle = load_bundle(path)
    except ScanClassifierError:
        return None
    answer = bundle.model.predict(intact["probe"], verbose=0)["volume"]
    np.testing.assert_allclose(answer, intact["answer"], atol=1e-5)
    return bundle.metadata.to_dict()


@FUZZ
@given(
    edit=st.one_of(
        st.tuples(
            st.just("set"),
            st.sampled_from(
                [
                    "name",
                    "classes",
                    "input_shape",
                    "intensity",
                    "temperature",
                    "version",
                    "training",
                    "created",
                ]
            ),
            JSON_VALUES,
        ),
        st.tuples(st.just("delete"), st.sampled_from(["name", "classes", "input_shape"])),
        st.tuples(st.just("bytes"), FLIPS, st.none() | st.floats(0, 1)),
        st.tuples(st.just("nest"), st.sampled_from([10, 3000, 100_000])),
    )
)
def test_mutated_bundle_json(tmp_path_factory, intact, edit):
    folder = tmp_path_factory.mktemp("b") / "bundle"
    shutil.copytree(intact["folder"], folder)
    text = (folder / "bundle.json").read_text()
    data = json.loads(text)
    if edit[0] == "set":
        data[edit[1]] = edit[2]
        raw = json.dumps(data).encode()
    elif edit[0] == "delete":
        del data[edit[1]]
        raw = json.dumps(data).encode()
    elif edit[0] == "nest":
        raw = (
            json.dumps({**data, "training": 0})
            .replace('"training": 0', '"training": ' + "[" * edit[1] + "]" * edit[1])
            .encode()
        )
    else:
        raw = _flipped(text.encode(), edit[1], edit[2])
    (folder / "bundle.json").write_bytes(raw)

    loaded = _loads_correctly_or_refuses(folder, intact)

    if loaded is not None:  # what loaded is what the file says
        written = json.loads(raw)
        for key in ("name", "classes", "input_shape", "temperature", "version", "training"):
            assert json.loads(json.dumps(loaded[key])) == written[key]


@FUZZ
@given(damage=ZIP_DAMAGE)
def test_damaged_bundle_zip(tmp_path_factory, intact, damage):
    path = tmp_path_factory.mktemp("z") / "bundle.zip"
    path.write_bytes(_damaged(intact["zip"], damage))
    _loads_correctly_or_refuses(path, intact)


@FUZZ
@given(
    damage=ZIP_DAMAGE
    | st.tuples(
        st.just("case.json"),
        st.sampled_from([b"[" * 100_000, b"{", b"\xff\xfe", b"[1, 2]", b'{"shape": 1e999}']),
    )
)
def test_damaged_case_zip(tmp_path_factory, intact, damage):
    root = tmp_path_factory.mktemp("c")
    raw = (
        _with_case_json(intact["cases"], damage[1])
        if damage[0] == "case.json"
        else _damaged(intact["cases"], damage)
    )
    (root / "cases.zip").write_bytes(raw)
    library = CaseLibrary(root / "library")
    try:
        result = library.import_zip(root / "cases.zip")
    except ScanClassifierError:
        return
    for record in result.imported:
        volume, _ = library.load(record.case_id)
        np.testing.assert_array_equal(volume.voxels, intact["voxels"][record.label])
    assert len(result.imported) + len(result.skipped) >= 1
    assert library.list() == sorted(result.imported, key=lambda r: (r.created, r.case_id))


def _with_case_json(raw: bytes, content: bytes) -> bytes:
    """The zip with the first case's case.json replaced by ``content``."""
    import io

    source = zipfile.ZipFile(io.BytesIO(raw))
    first = next(n for n in source.namelist() if n.endswith("case.json"))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            data = content if info.filename == first else source.read(info)
            target.writestr(info.filename, data, compress_type=info.compress_type)
    return out.getvalue()
