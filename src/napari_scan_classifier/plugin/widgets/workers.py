"""The Classify dock's worker-thread jobs: telling a scan's identity, classifying, explaining
another class, and relaying the core's progress callbacks as a generator worker's yields."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, NamedTuple, TypeVar

import numpy as np
from napari.qt.threading import thread_worker
from superqt.utils import GeneratorWorker

from napari_scan_classifier.choice import Choice, Chooser, ScanIdentity, identify
from napari_scan_classifier.errors import ScanClassifierError
from napari_scan_classifier.inference import Prediction
from napari_scan_classifier.models import Bundle
from napari_scan_classifier.results import (
    ScanResult,
    classify_scan,
    explain_prediction,
    resolve_bundle,
)
from napari_scan_classifier.volume import Volume

POLL_S = 0.05  # how often the worker looks for the core's progress reports
DISPLAY_PERCENTILE = 99.5  # of a map's positive values: where its colour scale tops out
DISPLAY_SAMPLE = 2**20  # voxels sampled (strided) to find it
MIN_DISPLAY_TOP = 1e-6
Report = tuple[int, int, str]  # (done, total, what)
T = TypeVar("T")


@thread_worker
def identification(volume: Volume) -> ScanIdentity | ScanClassifierError:
    """The scan's identity, or the error that says why it cannot be told (shown in the dock)."""
    try:
        return identify(volume)
    except ScanClassifierError as error:
        return error


@thread_worker(worker_class=GeneratorWorker, ignore_errors=True)
def classification(
    volume: Volume,
    model: str,
    bundles: dict[str, Bundle],
    options: dict[str, Any],
    cancel: threading.Event,
) -> Generator[Report, None, tuple[str, Bundle, ScanResult, Any, Choice | None]]:
    """Choose the model by the scan unless one is given, load it (unless loaded before) and
    classify; yields progress reports. No model for the scan: NoMatchingModelError.

    superqt's GeneratorWorker, not napari's: napari's would also report every error with its
    traceback, and the widget reports the ones the user can act on as one clear line.
    """
    yield (0, 1, "choosing the model" if not model else "loading the model")
    choice = None
    if not model:
        choice = Chooser().choose(volume)
        model = choice.require().location
    bundle = bundles.get(model) or resolve_bundle(model)
    step = partial(classify_scan, volume, bundle, cancel=cancel, **options)
    result = yield from reporting(step, cancel)
    return model, bundle, result, map_view(volume, result), choice


@thread_worker(worker_class=GeneratorWorker, ignore_errors=True)
def explanation(
    volume: Volume,
    bundle: Bundle,
    prediction: Prediction,
    options: dict[str, Any],
    cancel: threading.Event,
) -> Generator[Report, None, tuple[ScanResult, MapView | None]]:
    """The map of another class for a prediction already made; yields progress reports."""
    step = partial(explain_prediction, volume, bundle, prediction, cancel=cancel, **options)
    result = yield from reporting(step, cancel)
    return result, map_view(volume, result)


class MapView(NamedTuple):
    """How to show a saliency map, found in the worker (a scan of a 512x512x300 map would stall
    the viewer): world mm (z, y, x) of its peak, and the value its colour scale tops out at."""

    peak: tuple[float, ...]
    upper: float


def map_view(volume: Volume, result: ScanResult) -> MapView | None:
    """The map's peak and its display top: the 99.5th percentile of its positive values (on a
    strided sample), not its maximum, so that a map whose weight sits in few voxels (integrated
    gradients) still shows where it points instead of a few bright voxels on black."""
    if result.saliency is None:
        return None
    values = result.saliency.values
    index = np.unravel_index(int(np.argmax(values)), volume.shape)
    peak = tuple(float(v) for v in volume.index_to_world(np.asarray(index, dtype=float))[0])
    stride = max(1, round((values.size / DISPLAY_SAMPLE) ** (1 / 3)))
    sample = values[::stride, ::stride, ::stride]
    positive = sample[sample > 0]
    upper = float(np.percentile(positive, DISPLAY_PERCENTILE)) if positive.size else 1.0
    return MapView(peak, max(upper, MIN_DISPLAY_TOP))


def reporting(step: Callable[..., T], cancel: threading.Event) -> Generator[Report, None, T]:
    """Run ``step(progress=...)`` in a helper thread and yield its progress reports as they come:
    the core reports through a callback, a generator worker through yields. Returns its result
    or raises its error; closing the generator (the worker was quit) sets ``cancel`` first."""
    reports: queue.Queue[Report] = queue.Queue()
    with ThreadPoolExecutor(1, thread_name_prefix="scan-classifier") as pool:
        future = pool.submit(step, progress=lambda *report: reports.put(report))
        try:
            while not (future.done() and reports.empty()):
                try:
                    yield reports.get(timeout=POLL_S)
                except queue.Empty:
                    continue
        except GeneratorExit:  # napari's status bar quit the worker: stop the core too
            cancel.set()
            raise
        return future.result()
