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

from napari_scan_classifier.cohort.inputs import SeriesTask, discover, expand_inputs, file_key
from napari_scan_classifier.cohort.journal import JOURNAL_SUFFIX, Journal, journal_path
from napari_scan_classifier.cohort.progress import PROGRESS_INTERVAL_S, CohortProgress
from napari_scan_classifier.cohort.refs import (
    AutoRef,
    BundleRef,
    auto_ref,
    bundle_ref,
    model_sha256,
)
from napari_scan_classifier.cohort.run import HEADER_BATCH, CohortResult, classify_cohort
from napari_scan_classifier.cohort.worker import (
    IN_PROCESS,
    Options,
    classify_task,
    failed_row,
    worker_bundle,
)

__all__ = [
    "HEADER_BATCH",
    "IN_PROCESS",
    "JOURNAL_SUFFIX",
    "PROGRESS_INTERVAL_S",
    "AutoRef",
    "BundleRef",
    "CohortProgress",
    "CohortResult",
    "Journal",
    "Options",
    "SeriesTask",
    "auto_ref",
    "bundle_ref",
    "classify_cohort",
    "classify_task",
    "discover",
    "expand_inputs",
    "failed_row",
    "file_key",
    "journal_path",
    "model_sha256",
    "worker_bundle",
]
