"""A cohort run: the cluster (or none), series sent out, rows journalled as they arrive, summary."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from napari_scan_classifier.choice import is_auto
from napari_scan_classifier.cohort.inputs import SeriesTask, discover, expand_inputs
from napari_scan_classifier.cohort.journal import (
    Journal,
    _check_same_bundle,
    check_same_frame,
    journal_path,
)
from napari_scan_classifier.cohort.progress import CohortProgress
from napari_scan_classifier.cohort.refs import AutoRef, BundleRef, auto_ref, bundle_ref
from napari_scan_classifier.cohort.worker import _BUNDLES, Options, classify_task, failed_row
from napari_scan_classifier.errors import UnreadableScanError
from napari_scan_classifier.models import Bundle
from napari_scan_classifier.privacy import Redactor, numbered
from napari_scan_classifier.results import (
    NO_MODEL,
    BatchReport,
    check_output,
    check_saliency_class,
    chosen_models_summary,
    resolve_bundle,
    row_lines,
    write_report,
)

if TYPE_CHECKING:
    from distributed import Client

    from napari_scan_classifier.io.dicom import HeaderReader

# Files per header-reading task on a cluster: 0.1-0.2 s of work, well above a task's overhead
HEADER_BATCH = 128


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
    check_same_frame(earlier, options.frame)
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
            row["frame_requested"] = options.frame  # what a resumed run must ask for too
            journal.append(row)
            progress.update(row)
            lines, warnings = row_lines(row)
            for line in [*lines, *(f"warning: {warning}" for warning in warnings)]:
                progress.note(line)
    finally:
        progress.close()
    return _summarise(target, journal, ref, bundle, {t.key for t in tasks}, done, skipped)


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
    keys: set[str],
    done: set[str],
    skipped: list[dict[str, Any]],
) -> CohortResult:
    """The results of this run's series (``keys``): a journal kept from a run on other inputs
    lends them its rows, never its other series."""
    latest = {row["series_key"]: row for row in journal.rows()}  # a series tried again: its last
    rows = sorted((latest[key] for key in keys), key=lambda row: row["index"])
    resumed = len(done & keys)
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
