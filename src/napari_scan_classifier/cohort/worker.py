"""One series where it runs (a Dask worker or this process), with the bundle loaded once there."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from napari_scan_classifier.choice import choose, identify
from napari_scan_classifier.cohort.inputs import SeriesTask
from napari_scan_classifier.cohort.refs import AutoRef, BundleRef, model_sha256
from napari_scan_classifier.errors import (
    InvalidBundleError,
    InvalidInputError,
    ScanClassifierError,
)
from napari_scan_classifier.models import Bundle
from napari_scan_classifier.results import (
    at_frame,
    check_saliency_class,
    classify_series,
    json_safe,
    no_model_row,
    resolve_bundle,
)

IN_PROCESS = "in-process"  # the "worker" of a row classified without a cluster


@dataclass(frozen=True)
class Options:
    saliency: str = "none"
    passes: int = 10
    faithfulness: bool = False
    saliency_dir: str | None = None
    saliency_class: str | None = None  # None: each series' predicted class
    frame: int | None = None  # the volume of each 4D series to classify (see at_frame)


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
        volume = at_frame(_load_series(task), options.frame)
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
        "frame": None,
        "frames": None,
        "shape": None,
        "spacing_mm": None,
        "geometry_warnings": [],
        "status": "failed",
        "error": reason,
    }
