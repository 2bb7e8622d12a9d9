"""Cohorts: classify every series of many inputs, in this process or on a Dask cluster.

The client finds the series from headers only (on a cluster, the workers read the headers in
batches and the client groups them) and sends each out as one task; the task reads its series
where it runs (memory per worker stays one series), classifies it with the bundle that
worker process loaded once, writes its saliency map and returns its row. Rows are appended to a
JSON Lines journal as they arrive (one line per series, flushed and synced), so the results file
is valid after every append and a rerun of the same command skips every series already in it
(by series key): an interrupted cohort finishes without duplicates. A summary in the format of
``--out`` (JSON or CSV) is written from the journal at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from napari_scan_classifier.choice import (
    ModelEntry,
    bundle_path,
    choose,
    identify,
    installed_models,
    is_auto,
)
from napari_scan_classifier.errors import (
    InvalidBundleError,
    InvalidInputError,
    ScanClassifierError,
    UnreadableScanError,
)
from napari_scan_classifier.limits import special_file_reason
from napari_scan_classifier.models import Bundle
from napari_scan_classifier.models.bundle import MODEL_FILE, read_metadata
from napari_scan_classifier.models.bundled import bundled_model_path
from napari_scan_classifier.privacy import Redactor, numbered
from napari_scan_classifier.results import (
    ANSWERED,
    NO_MODEL,
    BatchReport,
    check_output,
    check_saliency_class,
    chosen_models_summary,
    classify_series,
    json_safe,
    no_model_row,
    resolve_bundle,
    write_report,
)

if TYPE_CHECKING:
    from distributed import Client

    from napari_scan_classifier.io.dicom import HeaderReader

JOURNAL_SUFFIX = ".jsonl"
# How messages name the journal: by its place, not its name (an --out may be named after a patient)
_JOURNAL = f"the results journal beside --out (its {JOURNAL_SUFFIX} file)"
IN_PROCESS = "in-process"  # the "worker" of a row classified without a cluster
PROGRESS_INTERVAL_S = 10.0  # plain progress lines when the output is not a terminal
_HASH_BLOCK = 1 << 20
# Files per header-reading task on a cluster: 0.1-0.2 s of work, well above a task's overhead
HEADER_BATCH = 128


@dataclass(frozen=True)
class BundleRef:
    """What a worker needs to load the client's bundle and prove it has the same one: its path
    (None: the bundled model of the worker's own installation) and the SHA-256 of its files."""

    path: str | None
    name: str
    version: int
    sha256: str

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


@dataclass(frozen=True)
class AutoRef:
    """The models each series chooses from by its modality and body region (see choice.py),
    with the reference a worker loads each by."""

    models: tuple[tuple[ModelEntry, BundleRef], ...]

    @property
    def entries(self) -> list[ModelEntry]:
        return [entry for entry, _ in self.models]

    def ref_of(self, entry: ModelEntry) -> BundleRef:
        return next(ref for known, ref in self.models if known == entry)


@dataclass(frozen=True)
class SeriesTask:
    """One series to classify: ``index`` counts series over the cohort, ``number`` is the input's
    position on the command line; ``files`` are its DICOM files (None: a NIfTI file)."""

    index: int
    number: int
    key: str
    path: str
    files: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Options:
    saliency: str = "none"
    passes: int = 10
    faithfulness: bool = False
    saliency_dir: str | None = None
    saliency_class: str | None = None  # None: each series' predicted class


@dataclass
class CohortResult:
    """How the run went: the summary written, series in the cohort, rows found from an earlier
    run, rows added now and how many of all rows failed."""

    out: Path
    journal: Path
    total: int
    resumed: int
    added: int
    failed: int
    skipped: list[dict[str, Any]] = field(default_factory=list)
    out_of_distribution: int = 0  # rows answered for scans unlike the model's training data
    no_model: int = 0  # rows of series no installed model covers (model chosen by the scan)


# ------------------------------------------------------------------------------------ inputs


def expand_inputs(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The inputs, with each ``@list.txt`` replaced by the paths it lists (one per line; blank
    lines and ``#`` comments ignored; relative paths are relative to the list's folder)."""
    inputs: list[Path] = []
    for given in map(str, paths):
        if not given.startswith("@"):
            inputs.append(Path(given))
            continue
        listing = Path(given[1:])
        try:
            lines = listing.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise UnreadableScanError(f"{given}: cannot read the list of inputs") from error
        for line in (line.strip() for line in lines):
            if line and not line.startswith("#"):
                inputs.append(listing.parent / Path(line).expanduser())
    missing = [f"input {n}" for n, p in enumerate(inputs, start=1) if not p.exists()]
    if missing:
        raise UnreadableScanError(f"{', '.join(missing)}: no such file or folder")
    if not inputs:
        raise UnreadableScanError("no inputs given (the list is empty)")
    return inputs


def discover(
    inputs: Sequence[Path], redact: Redactor, reader: HeaderReader | None = None
) -> tuple[list[SeriesTask], list[dict[str, Any]]]:
    """The series under every input, from headers only (NIfTI: its file hash is its key), and
    the files left out (by input number, reasons redacted). A series given twice is kept once.
    ``reader`` reads the DICOM headers elsewhere (a cluster's workers), else this process does."""
    from napari_scan_classifier.io import is_nifti
    from napari_scan_classifier.io.dicom import series_files

    tasks: list[SeriesTask] = []
    skipped: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, path in enumerate(inputs, start=1):
        special = special_file_reason(path)
        if special is not None:
            skipped.append({"input": number, "reason": special})
            continue
        if path.is_file() and is_nifti(path):
            found = {file_key(path): None}
        else:
            try:
                stacks, left_out = series_files(path, reader=reader)
            except ScanClassifierError as error:
                skipped.append({"input": number, "reason": redact(numbered(str(error), number))})
                continue
            for file in left_out:
                redact.found(file.local_path(), path)
            skipped += [{"input": number, "reason": redact(str(s))} for s in left_out]
            found = {key: tuple(map(str, files)) for key, files in stacks.items()}
        for key, files in found.items():
            if key not in seen:
                seen.add(key)
                tasks.append(SeriesTask(len(tasks) + 1, number, key, str(path), files))
    return tasks, skipped


def file_key(path: Path) -> str:
    """A NIfTI file's series key: a hash of its bytes, so the same scan keeps its key wherever it
    is copied (streamed; the file is never held in memory)."""
    digest = hashlib.sha1()
    with path.open("rb") as stream:
        while block := stream.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()[:12]


# ------------------------------------------------------------------------------------ bundle


def bundle_ref(bundle: Bundle) -> BundleRef:
    """The bundle as workers find it; the bundled model travels as None (each installation has
    its own copy, checked by hash)."""
    source = Path(bundle.path or bundled_model_path()).resolve()
    bundled = source == bundled_model_path().resolve()
    meta = bundle.metadata
    return BundleRef(
        None if bundled else str(source), meta.name, meta.version, model_sha256(bundle)
    )


def model_sha256(bundle: Bundle) -> str:
    """SHA-256 of the model file: as ``bundle.json`` records it (checked on load), else of
    ``model.keras`` in the folder or of the .zip."""
    recorded = bundle.metadata.files.get(MODEL_FILE)
    if recorded:
        return recorded
    source = Path(bundle.path or bundled_model_path())
    return _file_sha256(source if source.is_file() else source / MODEL_FILE)


def auto_ref(models: Sequence[ModelEntry] | None = None) -> AutoRef:
    """The installed models (default: :func:`~.choice.installed_models`) as workers find them:
    shipped ones by name, the others by path, each with the SHA-256 of its model file."""
    pairs = []
    for entry in installed_models() if models is None else models:
        path = bundle_path(entry)
        sha256 = read_metadata(path).files.get(MODEL_FILE) or _file_sha256(path / MODEL_FILE)
        pairs.append((entry, BundleRef(entry.location, entry.name, entry.version, sha256)))
    return AutoRef(tuple(pairs))


def _file_sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as stream:
        while block := stream.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


_BUNDLES: dict[str, Bundle] = {}
_BUNDLE_LOCK = threading.Lock()


def worker_bundle(ref: BundleRef) -> Bundle:
    """The bundle of ``ref``, loaded once per process (a worker serves many series with it)."""
    with _BUNDLE_LOCK:
        if ref.sha256 not in _BUNDLES:
            _limit_threads()
            bundle = resolve_bundle(ref.path)
            found = model_sha256(bundle)
            if found != ref.sha256:
                raise InvalidBundleError(
                    f"the model bundle {ref.name} v{ref.version} here differs from the client's "
                    f"(SHA-256 {found[:12]} instead of {ref.sha256[:12]})"
                )
            _BUNDLES[ref.sha256] = bundle
        return _BUNDLES[ref.sha256]


def _limit_threads() -> None:
    """On a Dask worker, let TensorFlow use as many threads as the worker runs tasks: worker
    processes share the machine's cores, and oversubscribing them slows every worker."""
    threads = _worker_threads()
    if threads is None:
        return
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # TensorFlow already ran something in this process
            pass


def _worker_threads() -> int | None:
    try:
        from distributed import get_worker

        return get_worker().state.nthreads
    except (ImportError, ValueError):
        return None


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return IN_PROCESS


# ------------------------------------------------------------------------------- one series


def classify_task(task: SeriesTask, ref: BundleRef | AutoRef, options: Options) -> dict[str, Any]:
    """Read, classify and explain one series where this runs (with the model it chooses, for an
    AutoRef); its row, or the reason it failed or no model covers it.

    What the data or the model refuse becomes a failed row; anything else (a bug, no memory)
    raises, so Dask retries the task once.
    """
    start = time.perf_counter()
    used = ref if isinstance(ref, BundleRef) else None
    choice = None
    try:
        volume = _load_series(task)
        loaded = time.perf_counter() - start
        if isinstance(ref, AutoRef):
            choice = choose(identify(volume), ref.entries)
            used = None if choice.model is None else ref.ref_of(choice.model)
        if used is None:
            row = no_model_row(task.index, task.number, volume, choice)
        else:
            bundle = worker_bundle(used)
            if choice is not None:  # the class to explain is checked against the model chosen
                check_saliency_class(bundle, options.saliency_class)
            row = classify_series(
                task.index,
                task.number,
                volume,
                bundle,
                saliency=options.saliency,
                passes=options.passes,
                faithfulness=options.faithfulness,
                saliency_dir=options.saliency_dir,
                saliency_class=options.saliency_class,
            )
        if "timings" in row:
            row["timings"]["load"] = loaded  # reading and decoding the series where it ran
    except ScanClassifierError as error:
        row = failed_row(task, str(error))
    if choice is not None:
        row["model_choice"] = choice.to_dict()
    row["series_key"] = task.key
    row["worker"] = _worker_address()
    row["bundle"] = None if used is None else used.summary()
    return json_safe(row)


def _load_series(task: SeriesTask) -> Any:
    if task.files is None:
        from napari_scan_classifier.io.nifti import load_nifti

        return load_nifti(task.path)
    from napari_scan_classifier.io.dicom import load_dicom

    volumes = load_dicom(task.path, series=[task.key], files=task.files).volumes
    if len(volumes) != 1:
        raise InvalidInputError(f"series {task.key} was not found again in its files")
    return volumes[0]


def failed_row(task: SeriesTask, reason: str) -> dict[str, Any]:
    """A row for a series that could not be read or run: its key stands for it."""
    return {
        "index": task.index,
        "input": task.number,
        "series": f"{task.index:03d} [{task.key}]",
        "series_key": task.key,
        "modality": None,
        "series_number": None,
        "description": None,
        "shape": None,
        "spacing_mm": None,
        "geometry_warnings": [],
        "status": "failed",
        "error": reason,
    }


# ----------------------------------------------------------------------------------- journal


class Journal:
    """The JSON Lines results file: read what an earlier run wrote, append one row at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def rows(self) -> list[dict[str, Any]]:
        """Rows already written; a last line cut short by a kill is dropped (and cut off)."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):
            with self.path.open("r+b") as stream:
                stream.truncate(len(complete))
        try:
            return [json.loads(line) for line in complete.decode("utf-8").splitlines() if line]
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ScanClassifierError(
                f"{_JOURNAL} is not a results journal of this program ({error}); "
                "choose another --out"
            ) from None

    def append(self, row: dict[str, Any]) -> None:
        line = json.dumps(json_safe(row), allow_nan=False) + "\n"
        with self.path.open("a", encoding="utf-8") as stream:
            stream.write(line)
            stream.flush()
            os.fsync(stream.fileno())


def journal_path(out: Path) -> Path:
    """``results.json`` / ``results.csv`` -> ``results.jsonl`` beside it."""
    return out.with_suffix(JOURNAL_SUFFIX)


def _check_same_bundle(rows: Iterable[dict[str, Any]], ref: BundleRef | AutoRef) -> None:
    refs = [ref] if isinstance(ref, BundleRef) else [r for _, r in ref.models]
    found = {(row.get("bundle") or {}).get("sha256") for row in rows} - {None}
    other = found - {r.sha256 for r in refs}
    if other:
        models = (
            f"{ref.name} v{ref.version}"
            if isinstance(ref, BundleRef)
            else "the models the scans choose"
        )
        raise ScanClassifierError(
            f"{_JOURNAL} holds results of another model (SHA-256 "
            f"{sorted(map(str, other))[0][:12]}); choose another --out to classify with {models}"
        )


# ---------------------------------------------------------------------------------- progress


class CohortProgress:
    """A progress bar (tqdm) on a terminal; a plain line every ``interval`` seconds elsewhere.
    Both show series done of the total, rate, time left and failures so far."""

    def __init__(
        self, total: int, done: int, stream: TextIO | None = None, interval: float = 0.0
    ) -> None:
        from tqdm import tqdm

        self.stream = stream or sys.stderr
        self.total, self.done, self.failed = total, done, 0
        self.interval = interval or PROGRESS_INTERVAL_S
        self.start = self.last = time.monotonic()
        self.added = 0
        terminal = self.stream.isatty()
        self.bar = tqdm(
            total=total,
            initial=done,
            unit="series",
            file=self.stream,
            disable=not terminal,
            dynamic_ncols=True,
        )

    def note(self, text: str) -> None:
        if self.bar.disable:
            print(text, file=self.stream, flush=True)
        else:
            self.bar.write(text, file=self.stream)

    def update(self, row: dict[str, Any]) -> None:
        self.done += 1
        self.added += 1
        if row["status"] not in ANSWERED:
            self.failed += 1
        if not self.bar.disable:
            self.bar.set_postfix(failed=self.failed, refresh=False)
            self.bar.update(1)
        elif time.monotonic() - self.last >= self.interval or self.done == self.total:
            self.last = time.monotonic()
            print(self.line(), file=self.stream, flush=True)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.added / elapsed * 60.0
        left = self.total - self.done
        eta = time.strftime("%H:%M:%S", time.gmtime(left / rate * 60.0)) if rate else "?"
        return (
            f"{self.done}/{self.total} series ({self.failed} failed), "
            f"{rate:.1f} series/min, {eta} left"
        )

    def close(self) -> None:
        self.bar.close()


# --------------------------------------------------------------------------------- executors


def _run_in_process(
    tasks: Sequence[SeriesTask], bundle: Bundle | None, ref: BundleRef | AutoRef, options: Options
) -> Iterator[dict[str, Any]]:
    if bundle is not None and isinstance(ref, BundleRef):
        _BUNDLES.setdefault(ref.sha256, bundle)
    for task in tasks:
        yield classify_task(task, ref, options)


@contextmanager
def _cluster(workers: int, scheduler: str | None, stream: TextIO) -> Iterator[Client | None]:
    """A Dask client on ``scheduler``, or on a local cluster of ``workers`` processes started
    here; None for neither. A task whose worker dies is retried once on another (the scheduler's
    allowed-failures; 1 on the clusters started here)."""
    if not (workers or scheduler):
        yield None
        return
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        cluster = (
            None
            if scheduler
            else LocalCluster(n_workers=workers, threads_per_worker=1, processes=True)
        )
        client = Client(scheduler or cluster)
    try:
        print(f"Dask dashboard: {client.dashboard_link}", file=stream, flush=True)
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _headers_on(client: Client) -> HeaderReader:
    """DICOM headers read on the cluster's workers in batches (so that finding the series of a
    large archive is not one process's work), the results in file order."""
    from napari_scan_classifier.io.dicom import read_headers

    def read(items: list[tuple[int, Path]]) -> Iterator[Any]:
        batches = [items[i : i + HEADER_BATCH] for i in range(0, len(items), HEADER_BATCH)]
        for future in client.map(read_headers, batches, pure=False):
            yield from future.result()
            future.release()

    return read


def _run_on_dask(
    tasks: Sequence[SeriesTask], ref: BundleRef | AutoRef, options: Options, client: Client
) -> Iterator[dict[str, Any]]:
    """Tasks out one per series, rows back as they finish."""
    from distributed import KilledWorker, as_completed

    futures = {
        client.submit(
            classify_task,
            task,
            ref,
            options,
            key=f"classify-{task.index}-{task.key}",
            retries=1,
            pure=False,
        ): task
        for task in tasks
    }
    for future in as_completed(futures):
        task = futures.pop(future)
        try:
            row = future.result()
        except KilledWorker:
            row = failed_row(task, "the worker running it died twice (out of memory?)")
            row.update(worker=None, bundle=_summary_of(ref))
        except Exception as error:  # a bug or a resource limit: recorded, cohort goes on
            row = failed_row(task, f"{type(error).__name__}: {error}")
            row.update(worker=None, bundle=_summary_of(ref))
        future.release()
        yield row


def _summary_of(ref: BundleRef | AutoRef) -> dict[str, Any] | None:
    return ref.summary() if isinstance(ref, BundleRef) else None


# ------------------------------------------------------------------------------------- a run


def classify_cohort(
    paths: Sequence[str | os.PathLike[str]],
    model: str | os.PathLike[str] | None,
    out: str | os.PathLike[str],
    *,
    options: Options | None = None,
    workers: int = 0,
    scheduler: str | None = None,
    stream: TextIO | None = None,
) -> CohortResult:
    """Classify every series under ``paths`` (folders, files, ``@list.txt``) into ``out``'s
    journal and then ``out`` itself, skipping series the journal already holds (but those no
    model covered: a model may have been installed since). ``model`` ``"auto"``: each series
    chooses its model (see choice.py), and the choice is noted on ``stream``.

    ``workers`` > 0 starts a local Dask cluster of that many processes; ``scheduler`` uses an
    existing one; neither: this process. Progress goes to ``stream`` (stderr by default).
    """
    options = options or Options()
    stream = stream or sys.stderr
    target = check_output(out)
    inputs = expand_inputs(paths)
    redact = Redactor(inputs)
    bundle = None if is_auto(model) else resolve_bundle(model)
    if bundle is not None:
        check_saliency_class(bundle, options.saliency_class)
    ref = auto_ref() if bundle is None else bundle_ref(bundle)
    with _cluster(workers, scheduler, stream) as client:
        reader = None if client is None else _headers_on(client)
        tasks, skipped = discover(inputs, redact, reader)
        if not tasks:
            reasons = "; ".join(s["reason"] for s in skipped) or "nothing found"
            raise UnreadableScanError(f"no scan found to classify ({reasons})")
        return _classify_tasks(tasks, skipped, target, bundle, ref, options, client, redact, stream)


def _classify_tasks(
    tasks: list[SeriesTask],
    skipped: list[dict[str, Any]],
    target: Path,
    bundle: Bundle | None,
    ref: BundleRef | AutoRef,
    options: Options,
    client: Client | None,
    redact: Redactor,
    stream: TextIO,
) -> CohortResult:
    """Every task not already in the journal, its row appended as it arrives; then the
    summary."""
    journal = Journal(journal_path(target))
    journal.path.parent.mkdir(parents=True, exist_ok=True)
    earlier = journal.rows()
    _check_same_bundle(earlier, ref)
    done = {row["series_key"] for row in earlier if row["status"] != NO_MODEL}
    pending = [task for task in tasks if task.key not in done]
    progress = CohortProgress(len(tasks), len(tasks) - len(pending), stream)
    for left_out in skipped:
        progress.note(f"skipped a file of input {left_out['input']}: {left_out['reason']}")
    rows = (
        _run_on_dask(pending, ref, options, client)
        if pending and client is not None
        else _run_in_process(pending, bundle, ref, options)
    )
    try:
        for row in rows:
            _redact_row(row, redact)
            journal.append(row)
            progress.update(row)
            choice = row.get("model_choice")
            if choice and row["status"] != NO_MODEL:
                progress.note(f"{row['series']}: {choice['reason']} ({choice['how']})")
            for note in filter(None, [row["error"], row.get("modality_warning")]):
                progress.note(f"warning: {row['series']}: {note}")
    finally:
        progress.close()
    return _summarise(target, journal, ref, bundle, len(done & {t.key for t in tasks}), skipped)


def _redact_row(row: dict[str, Any], redact: Redactor) -> None:
    """No input's path or name in what a worker wrote (third-party errors quote paths)."""
    row["geometry_warnings"] = [redact(w) for w in row["geometry_warnings"]]
    for key in ("error", "modality_warning"):
        if row.get(key):
            row[key] = redact(numbered(row[key], row["input"]))


def _summarise(
    out: Path,
    journal: Journal,
    ref: BundleRef | AutoRef,
    bundle: Bundle | None,
    resumed: int,
    skipped: list[dict[str, Any]],
) -> CohortResult:
    latest = {row["series_key"]: row for row in journal.rows()}  # a series tried again: its last
    rows = sorted(latest.values(), key=lambda row: row["index"])
    if bundle is None or not isinstance(ref, BundleRef):
        model = chosen_models_summary(rows)
    else:
        meta = bundle.metadata
        model = {
            "name": meta.name,
            "version": meta.version,
            "sha256": ref.sha256,
            "classes": list(meta.classes),
            "modality": meta.modality,
        }
    report = BatchReport(model, rows, skipped)
    write_report(report, out)
    failed = len(rows) - report.classified
    added = len(rows) - resumed
    outside = report.out_of_distribution
    return CohortResult(
        out, journal.path, len(rows), resumed, added, failed, skipped, outside, report.no_model
    )
