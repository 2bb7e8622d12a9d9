"""Seeded mutants of model bundles and case zips, and what the loaders make of them.

Three categories, N mutants each, the same bytes for every run (seeded):

- ``bundle_json``: bundle.json edited (fields set to odd values or deleted, deep nesting, huge
  grids, truncation, flipped or inserted bytes) beside an intact model.keras;
- ``bundle_zip``: a bundle .zip with flipped bytes, truncation, encrypted or oddly compressed
  members, lying sizes, a 1.5 GiB bomb in place of the model;
- ``case_zip``: an exported case library zip with the same kinds of damage, plus hostile
  case.json contents and a bomb in place of a volume.

Each mutant is loaded (``load_bundle``) or imported (``CaseLibrary.import_zip``) in a worker
process, and the outcome is one of

    clean        a documented error (ScanClassifierError), or a load whose result is right
    uncaught     any other exception (a traceback for the user)
    hang         no answer within --timeout seconds
    crash        the worker died, or took more than --memory-mib of memory or --disk-mib of disk
    silent-wrong the load succeeded but its result differs from what the file says (another
                 model output, another label or voxels)

Run it against any source tree (e.g. an older commit checked out elsewhere) with --src; the
reference artefacts are built once with the source tree this script belongs to.

    python benchmarks/fuzz_bundles_cases.py [-n 40] [--src path/to/src] [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import select
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections import Counter
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
OWN_SRC = HERE.parent / "src"
CATEGORIES = ("bundle_json", "bundle_zip", "case_zip")
OUTCOMES = ("clean", "uncaught", "hang", "crash", "silent-wrong")
BOMB_BYTES = 1536 << 20


# ------------------------------------------------------------------------------ reference


def prepare(base: Path) -> None:
    """Build the intact artefacts the mutants start from (in a worker: needs Keras)."""
    import numpy as np

    sys.path.insert(0, str(HERE.parent / "tests"))
    from model_fixtures import tiny_bundle

    from napari_scan_classifier.cases import CaseLibrary
    from napari_scan_classifier.models import save_bundle
    from napari_scan_classifier.volume import Volume

    bundle = tiny_bundle(grid=(8, 8, 8))
    folder = save_bundle(bundle, base / "bundle")
    save_bundle(bundle, base / "bundle.zip")
    probe = np.random.default_rng(0).random((1, 8, 8, 8, 1), dtype=np.float32)
    np.save(base / "probe.npy", probe)
    np.save(base / "expected.npy", bundle.model.predict(probe, verbose=0)["volume"])
    library = CaseLibrary(base / "library")
    rng = np.random.default_rng(1)
    for label in ("normal", "lesion"):
        voxels = rng.integers(-1000, 2000, size=(4, 5, 6)).astype(np.int16)
        library.add(Volume(voxels, np.diag([2.0, 1.0, 1.5, 1.0]), modality="CT"), label)
    library.export_zip(base / "cases.zip")
    assert (folder / "bundle.json").is_file()


# ------------------------------------------------------------------------------- mutants


def _odd_value(rng: random.Random) -> str:
    """JSON text of a value a field should not have."""
    choices = [
        "null",
        "-1",
        "0",
        "1e308",
        "1e999",
        "NaN",
        "Infinity",
        '"x"',
        '""',
        "[]",
        "{}",
        "[4096, 4096, 4096]",
        "[1, 1, 1]",
        "[0.5, 1, 1]",
        '["a", "a"]',
        "true",
        "9" * 5000,
        "[" * 3000 + "]" * 3000,
        '{"kind": []}',
        '"\\ud800"',
    ]
    return rng.choice(choices)


def mutate_bundle_json(text: str, rng: random.Random) -> bytes:
    data = json.loads(text)
    op = rng.randrange(7)
    if op <= 2:  # one field to an odd value
        key = rng.choice([*data, "input_shape", "input_shape"])
        fields = {k: json.dumps(v) for k, v in data.items()}
        fields[key] = _odd_value(rng)
        return ("{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in fields.items()) + "}").encode()
    if op == 3:  # a field deleted
        data.pop(rng.choice(list(data)))
        return json.dumps(data).encode()
    raw = bytearray(text.encode())
    if op == 4:  # truncated
        return bytes(raw[: rng.randrange(len(raw))])
    if op == 5:  # flipped bytes
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        return bytes(raw)
    depth = rng.choice([100, 5000, 100_000])  # deep nesting, well-formed
    nested = "[" * depth + "0" + "]" * depth
    return json.dumps({**data, "training": {"x": 0}}).replace('{"x": 0}', nested).encode()


def _central_entries(raw: bytes) -> list[int]:
    """Offsets of the central directory entries of a zip."""
    offsets, start = [], raw.find(b"PK\x01\x02")
    while start >= 0:
        offsets.append(start)
        start = raw.find(b"PK\x01\x02", start + 4)
    return offsets


def _with_member(raw: bytes, name_ends: str, content: bytes, method: int) -> bytes:
    """The zip with the member whose name ends in ``name_ends`` replaced."""
    source = zipfile.ZipFile(_bytes_io(raw))
    out = _bytes_io(b"")
    with zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            if info.filename.endswith(name_ends):
                target.writestr(info.filename, content, compress_type=method)
            else:
                target.writestr(info, source.read(info), compress_type=info.compress_type)
    return out.getvalue()


def _bytes_io(raw: bytes):
    import io

    return io.BytesIO(raw)


_BOMBS: dict[tuple[int, str], bytes] = {}


def _bomb_zip(raw: bytes, name_ends: str) -> bytes:
    """The zip with a member replaced by BOMB_BYTES of zeros, deflated (~1000-fold)."""
    key = (zlib.crc32(raw), name_ends)
    if key not in _BOMBS:
        source = zipfile.ZipFile(_bytes_io(raw))
        out = _bytes_io(b"")
        chunk = b"\0" * (16 << 20)
        with zipfile.ZipFile(out, "w") as target:
            for info in source.infolist():
                if not info.filename.endswith(name_ends):
                    target.writestr(info, source.read(info), compress_type=info.compress_type)
                    continue
                member = zipfile.ZipInfo(info.filename)
                member.compress_type = zipfile.ZIP_DEFLATED
                with target.open(member, "w") as stream:
                    for _ in range(BOMB_BYTES // len(chunk)):
                        stream.write(chunk)
        _BOMBS[key] = out.getvalue()
    return _BOMBS[key]


def mutate_zip(raw: bytes, rng: random.Random, json_member: str, big_member: str) -> bytes:
    """Damage a zip: bytes, headers, members; ``json_member`` and ``big_member`` name endings."""
    op = rng.randrange(10)
    data = bytearray(raw)
    entries = _central_entries(raw)
    if op <= 2:  # flipped bytes anywhere
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if op == 3:  # truncated
        return bytes(data[: rng.randrange(len(data))])
    if op == 4:  # a member marked encrypted
        data[rng.choice(entries) + 8] |= 0x1
        return bytes(data)
    if op == 5:  # a member with another compression method
        entry = rng.choice(entries)
        data[entry + 10 : entry + 12] = rng.choice([1, 6, 9, 12, 14, 98, 99]).to_bytes(2, "little")
        return bytes(data)
    if op == 6:  # a member declaring another size
        entry = rng.choice(entries)
        size = rng.choice([0, 1, 2**31 - 1, 2**32 - 1])
        data[entry + 24 : entry + 28] = size.to_bytes(4, "little")
        return bytes(data)
    if op == 7:  # hostile JSON inside
        content = rng.choice(
            [b"[" * 100_000, b"{", b"\xff\xfe", b"[1, 2]", b'{"a": ' + b"9" * 5000 + b"}"]
        )
        return _with_member(raw, json_member, content, zipfile.ZIP_DEFLATED)
    if op == 8:  # a zip bomb in place of the big member
        return _bomb_zip(raw, big_member)
    return _with_member(raw, big_member, b"\0" * rng.choice([0, 10, 4096]), zipfile.ZIP_STORED)


def make_mutants(base: Path, work: Path, category: str, n: int, seed: int) -> list[Path]:
    rng = random.Random(f"{seed}-{category}")
    mutants = []
    for k in range(n):
        target = work / category / f"{k:03d}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if category == "bundle_json":
            shutil.copytree(base / "bundle", target)
            text = (base / "bundle" / "bundle.json").read_text()
            (target / "bundle.json").write_bytes(mutate_bundle_json(text, rng))
        elif category == "bundle_zip":
            target = target.with_suffix(".zip")
            raw = (base / "bundle.zip").read_bytes()
            target.write_bytes(mutate_zip(raw, rng, "bundle.json", "model.keras"))
        else:
            target = target.with_suffix(".zip")
            raw = (base / "cases.zip").read_bytes()
            target.write_bytes(mutate_zip(raw, rng, "case.json", "volume.nii.gz"))
        mutants.append(target)
    return mutants


# -------------------------------------------------------------------------------- worker


def worker(base: Path, scratch: Path) -> None:
    """Answer one JSON line per mutant path read from stdin."""
    import numpy as np

    from napari_scan_classifier.cases import CaseLibrary
    from napari_scan_classifier.errors import ScanClassifierError
    from napari_scan_classifier.models import load_bundle

    probe, expected = np.load(base / "probe.npy"), np.load(base / "expected.npy")
    originals = {r.label: r for r in CaseLibrary(base / "library").list()}
    reference = CaseLibrary(base / "library")
    print("ready", flush=True)
    for line in sys.stdin:
        category, path = line.split("\t")
        path = Path(path.strip())
        try:
            if category == "case_zip":
                library = CaseLibrary(scratch / path.stem)
                result = library.import_zip(path)
                wrong = []
                for record in result.imported:
                    original = originals.get(record.label)
                    volume, _ = library.load(record.case_id)
                    if original is None:
                        wrong.append(f"label {record.label!r}")
                        continue
                    expected_volume, _ = reference.load(original.case_id)
                    if not (
                        np.array_equal(volume.voxels, expected_volume.voxels)
                        and np.allclose(volume.affine, expected_volume.affine)
                    ):
                        wrong.append("voxels or geometry")
                shutil.rmtree(scratch / path.stem, ignore_errors=True)
            else:
                bundle = load_bundle(path)
                got = bundle.model.predict(probe, verbose=0)["volume"]
                wrong = [] if np.allclose(got, expected, atol=1e-5) else ["model output"]
                if category == "bundle_json":
                    wrong += _metadata_disagreements(bundle.metadata, path / "bundle.json")
            answer = {"outcome": "silent-wrong" if wrong else "clean", "detail": ", ".join(wrong)}
        except ScanClassifierError as error:
            answer = {"outcome": "clean", "detail": type(error).__name__}
        except BaseException as error:  # what the user would see as a traceback
            answer = {"outcome": "uncaught", "detail": f"{type(error).__name__}: {error}"[:160]}
        print(json.dumps(answer), flush=True)


def _metadata_disagreements(metadata: object, file: Path) -> list[str]:
    """Fields whose loaded value is not what the (mutated) bundle.json says."""
    data = json.loads(file.read_text())
    wrong = []
    for key, value in data.items():
        if not hasattr(metadata, key) or key in ("created", "files"):
            continue
        loaded = getattr(metadata, key)
        if json.loads(json.dumps(loaded)) != value:
            wrong.append(f"field {key}")
    return wrong


# -------------------------------------------------------------------------------- parent


def _disk_used(folder: Path) -> int:
    """Bytes in files under ``folder``; files vanishing meanwhile are fine (os.walk skips)."""
    total = 0
    for root, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


class Worker:
    def __init__(self, src: Path, base: Path, scratch: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(src), "TF_CPP_MIN_LOG_LEVEL": "3"}
        command = [sys.executable, __file__, "--worker", "--base", str(base)]
        command += ["--scratch", str(scratch)]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True
        )
        self.scratch = scratch
        if self._readline(300.0) != "ready":
            raise RuntimeError("the worker did not start")
        self.baseline = psutil.Process(self.process.pid).memory_info().rss

    def run(self, category: str, path: Path, timeout: float, memory: int, disk: int) -> dict:
        self.process.stdin.write(f"{category}\t{path}\n")
        self.process.stdin.flush()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], 0.05)
            if ready:
                line = self.process.stdout.readline()
                if not line:
                    return {"outcome": "crash", "detail": f"exit {self.process.wait()}"}
                return json.loads(line)
            problem = self._over_limits(memory, disk)
            if problem:
                self.stop()
                return {"outcome": "crash", "detail": problem}
        self.stop()
        return {"outcome": "hang", "detail": f"no answer in {timeout:.0f} s"}

    def _over_limits(self, memory: int, disk: int) -> str | None:
        try:
            rss = psutil.Process(self.process.pid).memory_info().rss
        except psutil.NoSuchProcess:
            return "died"
        if rss - self.baseline > memory:
            return f"memory over {memory >> 20} MiB"
        if _disk_used(self.scratch) > disk:
            return f"disk over {disk >> 20} MiB"
        return None

    def _readline(self, timeout: float) -> str:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        return self.process.stdout.readline().strip() if ready else ""

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def run_all(args: argparse.Namespace) -> dict[str, Counter]:
    work = Path(tempfile.mkdtemp(prefix="fuzz-bundles-cases-"))
    base = work / "base"
    base.mkdir()
    env = {**os.environ, "PYTHONPATH": str(OWN_SRC), "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run([sys.executable, __file__, "--prepare", str(base)], check=True, env=env)
    tallies: dict[str, Counter] = {}
    details: list[str] = []
    scratch = work / "scratch"
    try:
        for category in CATEGORIES:
            mutants = make_mutants(base, work, category, args.n, args.seed)
            tallies[category] = Counter()
            worker = None
            for path in mutants:
                if worker is None:
                    shutil.rmtree(scratch, ignore_errors=True)
                    scratch.mkdir()
                    worker = Worker(args.src, base, scratch)
                answer = worker.run(
                    category, path, args.timeout, args.memory_mib << 20, args.disk_mib << 20
                )
                tallies[category][answer["outcome"]] += 1
                if answer["outcome"] == "clean" and not answer["detail"]:
                    tallies[category]["loaded"] += 1
                if answer["outcome"] != "clean":
                    details.append(
                        f"{category} {path.name}: {answer['outcome']} {answer['detail']}"
                    )
                if answer["outcome"] in ("crash", "hang"):
                    worker = None
            if worker is not None:
                worker.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for line in details:
        print(line)
    return tallies


def print_table(tallies: dict[str, Counter], n: int) -> None:
    print()
    print(f"{'category':<12} {'mutants':>7} " + " ".join(f"{o:>12}" for o in OUTCOMES))
    total = Counter()
    for category, tally in tallies.items():
        total.update(tally)
        counts = " ".join(f"{tally[o]:>12}" for o in OUTCOMES)
        print(f"{category:<12} {n:>7} {counts}")
    counts = " ".join(f"{total[o]:>12}" for o in OUTCOMES)
    print(f"{'all':<12} {n * len(tallies):>7} {counts}")
    loaded = ", ".join(f"{c} {t['loaded']}" for c, t in tallies.items())
    print(f"clean mutants that loaded (the rest were refused with a documented error): {loaded}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=40, help="mutants per category")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--src", type=Path, default=OWN_SRC, help="source tree to test")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per mutant")
    parser.add_argument("--memory-mib", type=int, default=1024, help="memory over the idle worker")
    parser.add_argument("--disk-mib", type=int, default=1024, help="disk written per worker")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--prepare", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        prepare(args.prepare)
    elif args.worker:
        worker(args.base, args.scratch)
    else:
        print(f"source: {args.src.resolve()}  seed {args.seed}  {args.n} mutants per category")
        print_table(run_all(args), args.n)


if __name__ == "__main__":
    main()
