"""Classify scans with a model bundle: calibrated probabilities, per-slice scores, uncertainty.

Each scan (or a box in it) is resampled onto the bundle's model grid and intensity range by
:func:`~napari_scan_classifier.preprocess.prepare`; several scans go through the network in one
batch. Probabilities are calibrated, ``softmax(logits / temperature + class_bias)`` with the
bundle's temperature and class bias (older bundles have no bias), and the predicted class follows
the bundle's decision rule (the most probable class, or a threshold for an operating point).

Uncertainty comes from N stochastic passes:

- ``"mc_dropout"``: the model's :class:`~napari_scan_classifier.models.MCDropout` layers sample
  masks (a twin from :func:`~napari_scan_classifier.models.with_mc_dropout`, BatchNorm on its
  moving statistics). Everything upstream of the first dropout layer is deterministic, so it runs
  once and only the network's tail is sampled N times: ten passes cost about one.
- ``"tta"``: test-time augmentation, the plain pass plus N - 1 passes with a small intensity
  gain/offset jitter, every other one mirrored left-right (see
  :func:`~napari_scan_classifier.preprocess.mirror_left_right`).
- ``"none"``: the plain pass only; the spread is zero.

Reported per scan: the per-class standard deviation of the pass probabilities, the predictive
entropy ``H[mean p]`` and the mutual information ``H[mean p] - mean H[p]`` (the part of the
entropy due to the model's own uncertainty), in nats.

A bundle with ``test_time_mirror`` answers with the mean logits (volume and per slice) of the scan
and of its left-right mirror image: a lesion is as likely on either side, and the network, never
exactly symmetric, sees each scan both ways round (nnU-Net's mirroring at test time). Each
uncertainty pass is averaged the same way. The applicability check reads the plain pass's
features, as its detector was fitted on them.
"""

from __future__ import annotations

import threading
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import keras
import numpy as np
from scipy.special import entr

from napari_scan_classifier.applicability import Applicability, assess
from napari_scan_classifier.backend import device_name
from napari_scan_classifier.errors import CancelledError, InvalidInputError
from napari_scan_classifier.evaluation import softmax
from napari_scan_classifier.models import Bundle, MCDropout, with_mc_dropout
from napari_scan_classifier.preprocess import (
    Box,
    ModelGrid,
    check_scan,
    mirror_left_right,
    mirror_views,
    prepare,
    slice_index_map,
)
from napari_scan_classifier.volume import Volume

Method = Literal["mc_dropout", "tta", "none"]
METHODS = ("mc_dropout", "tta", "none")
Progress = Callable[[int, int, str], None]
Cancel = Callable[[], bool] | threading.Event

TTA_GAIN = 0.05  # intensity gain drawn from 1 +- this
TTA_OFFSET = 0.02  # offset drawn from +- this times the input's value range
MAX_LABEL_VALUES = 16  # an integer array with this few values is a label image, not a scan
_LABEL_SAMPLE = 100_000  # voxels looked at to tell labels from a scan


@dataclass
class Prediction:
    """The result for one scan.

    ``probabilities`` are calibrated (``softmax(logits / temperature + class_bias)``), in the
    bundle's class order; ``predicted_class`` follows the bundle's decision rule; ``logits`` are
    the raw volume logits. ``per_slice`` is ``(source slices, classes)``: the softmax of a
    slice-scoring model's per-slice logits (uncalibrated: the calibration is fitted to volume
    logits), mapped to the scan's own slices, NaN where the model grid does not reach;
    ``None`` for models that do not score slices. ``timings`` (s): ``preprocess`` is this scan's,
    ``predict`` and ``uncertainty`` are for the whole batch it was classified in. ``ood`` says
    whether the scan is within what the model was trained on (see :mod:`.applicability`).
    """

    probabilities: dict[str, float]
    predicted_class: str
    logits: np.ndarray
    per_slice: np.ndarray | None
    uncertainty: dict[str, Any]
    device: str
    timings: dict[str, float]
    model_name: str
    model_version: int
    modality_warning: str | None = None
    ood: Applicability | None = None
    decision_rule: dict[str, Any] = field(default_factory=lambda: {"kind": "argmax"})

    @property
    def in_distribution(self) -> bool:
        return self.ood is None or self.ood.in_distribution

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; per-slice scores as one list per class, ``None`` outside the grid."""
        per_slice = None
        if self.per_slice is not None:
            per_slice = {
                name: [None if np.isnan(p) else float(p) for p in self.per_slice[:, k]]
                for k, name in enumerate(self.probabilities)
            }
        return {
            "model": {"name": self.model_name, "version": self.model_version},
            "predicted_class": self.predicted_class,
            "probabilities": dict(self.probabilities),
            "logits": [float(v) for v in self.logits],
            "per_slice": per_slice,
            "uncertainty": self.uncertainty,
            "device": self.device,
            "timings": dict(self.timings),
            "modality_warning": self.modality_warning,
            "ood": None if self.ood is None else self.ood.to_dict(),
            "decision_rule": dict(self.decision_rule),
        }


def classify(
    volumes: Volume | Sequence[Volume],
    bundle: Bundle,
    *,
    box: Box | Sequence[Box | None] | None = None,
    uncertainty_passes: int = 10,
    method: Method = "mc_dropout",
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> Prediction | list[Prediction]:
    """Classify one scan (returns a Prediction) or several in one batch (returns a list).

    ``box`` is one region for every scan or one per scan (``None``: the whole scan). Raises
    InvalidInputError for data that is not a scan, and CancelledError when ``cancel`` fires
    (checked between scans and between uncertainty passes).
    """
    single = isinstance(volumes, Volume)
    scans = [volumes] if single else list(volumes)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if uncertainty_passes < 1:
        raise ValueError(f"uncertainty_passes must be at least 1, got {uncertainty_passes}")
    if not scans:
        raise InvalidInputError("no scan to classify")
    boxes = _boxes_for(box, len(scans))
    passes = 0 if method == "none" else uncertainty_passes
    report = Reporter(len(scans) + 1 + passes, progress, cancel)
    start = time.perf_counter()

    inputs, grids, preprocess_times = [], [], []
    for i, (scan, region) in enumerate(zip(scans, boxes, strict=True)):
        report(f"resampling scan {i + 1} of {len(scans)}")
        t0 = time.perf_counter()
        x, grid = prepare_input(scan, bundle, region)
        inputs.append(x)
        grids.append(grid)
        preprocess_times.append(time.perf_counter() - t0)
    batch = np.stack(inputs)[..., None]

    report("running the model")
    t0 = time.perf_counter()
    runner = _runner(bundle.model)
    mirror = bundle.metadata.test_time_mirror
    features, outputs = runner.forward(batch, mirror)
    predict_time = time.perf_counter() - t0
    meta = bundle.metadata
    t0 = time.perf_counter()
    verdicts = assess(
        scans, batch[..., 0], bundle.model, meta.applicability, bundle.detector, meta.modality
    )
    applicability_time = time.perf_counter() - t0

    t0 = time.perf_counter()
    samples = _sample(runner, batch, features, outputs["volume"], method, passes, mirror, report)
    timings = {
        "predict": predict_time,
        "applicability": applicability_time,
        "uncertainty": time.perf_counter() - t0,
    }
    timings["total"] = time.perf_counter() - start

    results = [
        _prediction(bundle, scan, b, outputs, samples, grids[b], method, timings, seconds)
        for b, (scan, seconds) in enumerate(zip(scans, preprocess_times, strict=True))
    ]
    for result, verdict in zip(results, verdicts, strict=True):
        result.ood = verdict
    for result in results:
        if result.modality_warning:
            warnings.warn(result.modality_warning, UserWarning, stacklevel=2)
    report.finish()
    return results[0] if single else results


def prepare_input(
    volume: Volume, bundle: Bundle, box: Box | None = None
) -> tuple[np.ndarray, ModelGrid]:
    """The (D, H, W) model input for ``volume`` (or ``box`` in it) and its grid, after checking
    that the data are a scan at all (InvalidInputError otherwise)."""
    if not isinstance(volume, Volume):
        raise InvalidInputError(f"expected a scan volume, got {type(volume).__name__}")
    check_scan(volume.voxels)
    if _looks_like_labels(volume.voxels):
        raise InvalidInputError(
            "the data look like a label image (a segmentation with a handful of integer values), "
            "not a CT or MR scan"
        )
    meta = bundle.metadata
    return prepare(volume, meta.input_shape, meta.target_spacing_mm, meta.intensity, box)


def logits_of(bundle: Bundle, batch: np.ndarray) -> np.ndarray:
    """Volume logits (B, classes) of a (B, D, H, W) batch, through the compiled predict path,
    averaged with the mirror image's for a bundle with ``test_time_mirror``."""
    model, mirror = bundle.model, bundle.metadata.test_time_mirror

    def logits(x: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict_on_batch(x[..., None])["volume"], dtype=np.float64)

    return np.mean([logits(view) for view in mirror_views(batch, mirror)], axis=0)


@dataclass
class _Runner:
    """A model made ready for repeated inference; built once per model (see :func:`_runner`).

    ``deterministic`` gives the input of the first dropout layer (the cut) and the outputs in one
    compiled pass; ``tail`` samples the rest of the MC twin from the cut. Without a clean cut (a
    path around it) the cut is the input itself and the tail the whole twin; without dropout
    layers there is no twin. Nothing here refers to the model object itself, only to its layers,
    so the cache entry goes when the model does.
    """

    deterministic: keras.Model
    twin: keras.Model | None = None
    tail: keras.Model | None = None
    cut_is_input: bool = False

    @classmethod
    def build(cls, model: keras.Model) -> _Runner:
        dropouts = [layer for layer in model.layers if isinstance(layer, MCDropout)]
        plain = keras.Model(model.input, model.output)
        if not dropouts:
            return cls(plain, cut_is_input=True)
        twin = with_mc_dropout(model)
        cut = dropouts[0].name
        try:
            tail = keras.Model(twin.get_layer(cut).input, twin.output)
        except ValueError:
            return cls(plain, twin, twin, cut_is_input=True)
        deterministic = keras.Model(model.input, [model.get_layer(cut).input, model.output])
        return cls(deterministic, twin, tail)

    def forward(
        self, batch: np.ndarray, mirror: bool = False
    ) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
        """Cut features and the model's outputs for a (B, D, H, W, 1) batch; with ``mirror``,
        the features of the batch and of its mirror image and the mean of their outputs (per
        scan and per slice: neither has a left-right axis)."""
        passes = [self._one_pass(view) for view in mirror_views(batch, mirror)]
        outputs = {key: np.mean([out[key] for _, out in passes], axis=0) for key in passes[0][1]}
        return [features for features, _ in passes], outputs

    def sampled(self, features: list[np.ndarray]) -> np.ndarray:
        """One dropout sample of the volume logits, the mean over the views of ``features``."""
        assert self.tail is not None
        views = [keras.ops.convert_to_numpy(self.tail(f)["volume"]) for f in features]
        return np.mean(views, axis=0)

    def _one_pass(self, batch: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if self.cut_is_input:
            return batch, dict(self.deterministic.predict_on_batch(batch))
        features, outputs = self.deterministic.predict_on_batch(batch)
        return features, dict(outputs)


_RUNNERS: weakref.WeakKeyDictionary[keras.Model, _Runner] = weakref.WeakKeyDictionary()


def _runner(model: keras.Model) -> _Runner:
    """The cached runner of ``model``, its twin given the model's current weights (a model may
    be trained after its runner was built)."""
    if model not in _RUNNERS:
        _RUNNERS[model] = _Runner.build(model)
    runner = _RUNNERS[model]
    if runner.twin is not None:
        runner.twin.set_weights(model.get_weights())
    return runner


class Reporter:
    """Progress reports and cancel checks for a long job: call it with a message before each
    step; it raises CancelledError once ``cancel`` fires."""

    def __init__(
        self,
        total: int,
        progress: Progress | None,
        cancel: Cancel | None,
        job: str = "classification",
    ) -> None:
        self.total, self.done, self.job = total, 0, job
        self.progress = progress
        self.cancelled = cancel.is_set if isinstance(cancel, threading.Event) else cancel

    def __call__(self, message: str) -> None:
        if self.cancelled is not None and self.cancelled():
            raise CancelledError(f"{self.job} was cancelled")
        if self.progress is not None:
            self.progress(self.done, self.total, message)
        self.done += 1

    def finish(self) -> None:
        if self.progress is not None:
            self.progress(self.total, self.total, "done")


def _sample(
    runner: _Runner,
    batch: np.ndarray,
    features: list[np.ndarray],
    logits: np.ndarray,
    method: Method,
    passes: int,
    mirror: bool,
    report: Reporter,
) -> np.ndarray:
    """Volume logits of every uncertainty pass, (passes, B, classes); the plain pass for none."""
    tail = runner.tail
    if method == "none" or (method == "mc_dropout" and tail is None):
        return np.asarray(logits)[None]
    if method == "mc_dropout":
        samples = []
        for k in range(passes):
            report(f"uncertainty: dropout pass {k + 1} of {passes}")
            samples.append(runner.sampled(features))
        return np.stack(samples)
    rng = np.random.default_rng(0)
    samples = [np.asarray(logits)]
    report(f"uncertainty: augmented pass 1 of {passes}")
    for k in range(1, passes):
        report(f"uncertainty: augmented pass {k + 1} of {passes}")
        augmented = _augment(batch, flip=k % 2 == 1, rng=rng)
        samples.append(runner.forward(augmented, mirror)[1]["volume"])
    return np.stack(samples)


def _augment(batch: np.ndarray, *, flip: bool, rng: np.random.Generator) -> np.ndarray:
    """Each scan of the batch with an intensity jitter, mirrored left-right when ``flip``."""
    views = mirror_left_right(batch) if flip else batch
    out = np.empty_like(batch)
    for b, x in enumerate(views):
        gain = 1.0 + rng.uniform(-TTA_GAIN, TTA_GAIN)
        offset = rng.uniform(-TTA_OFFSET, TTA_OFFSET) * float(x.max() - x.min())
        out[b] = x * np.float32(gain) + np.float32(offset)
    return out


def _prediction(
    bundle: Bundle,
    scan: Volume,
    b: int,
    outputs: dict[str, np.ndarray],
    samples: np.ndarray,
    grid: ModelGrid,
    method: Method,
    batch_timings: dict[str, float],
    preprocess_seconds: float,
) -> Prediction:
    meta = bundle.metadata
    logits = np.asarray(outputs["volume"][b], dtype=np.float64)
    probabilities = meta.probabilities(logits[None])[0]
    per_slice = None
    if "slices" in outputs and grid.order[0] == 0:  # else its slices cut across the scan's
        per_slice = slice_index_map(grid).apply(softmax(outputs["slices"][b]))
    uncertainty = _uncertainty(meta.probabilities(samples[:, b]), meta.classes)
    uncertainty.update(method=method, passes=int(samples.shape[0]), mirrored=meta.test_time_mirror)
    if method == "mc_dropout" and samples.shape[0] == 1:
        uncertainty["note"] = "the model has no dropout layers to sample: no spread measured"
    return Prediction(
        probabilities={name: float(p) for name, p in zip(meta.classes, probabilities, strict=True)},
        predicted_class=meta.classes[int(meta.decide(probabilities[None])[0])],
        logits=logits,
        per_slice=per_slice,
        uncertainty=uncertainty,
        device=device_name(),
        timings={"preprocess": preprocess_seconds, **batch_timings},
        model_name=meta.name,
        model_version=meta.version,
        modality_warning=_modality_warning(scan, bundle),
        decision_rule=dict(meta.decision_rule),
    )


def _uncertainty(probabilities: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Spread of (passes, classes) probabilities: per-class mean and SD, entropy, mutual info."""
    mean = probabilities.mean(axis=0)
    entropy = float(entr(mean).sum())
    expected_entropy = float(entr(probabilities).sum(axis=1).mean())
    return {
        "mean": {name: float(p) for name, p in zip(classes, mean, strict=True)},
        "std": {name: float(s) for name, s in zip(classes, probabilities.std(axis=0), strict=True)},
        "predictive_entropy": entropy,
        "mutual_information": max(entropy - expected_entropy, 0.0),
    }


def _modality_warning(scan: Volume, bundle: Bundle) -> str | None:
    expected = bundle.metadata.modality
    if scan.modality == expected:
        return None
    return (
        f"this scan's modality is {scan.modality!r} but the model '{bundle.metadata.name}' "
        f"was trained on {expected} scans: the result may not be meaningful"
    )


def _looks_like_labels(voxels: np.ndarray) -> bool:
    """Non-negative integers with only a few values: a segmentation, not a scan."""
    if not np.issubdtype(voxels.dtype, np.integer):
        return False
    step = max(1, round((voxels.size / _LABEL_SAMPLE) ** (1 / 3)))
    values = np.unique(voxels[::step, ::step, ::step])
    return 1 < values.size <= MAX_LABEL_VALUES and values[0] >= 0


def _boxes_for(box: Box | Sequence[Box | None] | None, n: int) -> list[Box | None]:
    if box is None or isinstance(box, Box):
        return [box] * n
    boxes = list(box)
    if len(boxes) != n:
        raise ValueError(f"got {len(boxes)} boxes for {n} scans")
    return boxes
