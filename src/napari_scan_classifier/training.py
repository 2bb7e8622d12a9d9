"""Train a scan classifier from scratch or fine-tune a bundle; the result is a new bundle version.

One pipeline serves the command line, the napari widget and the bundled demo model:

1. **Data**: a case library folder or a MedMNIST-style ``.npz`` (see :mod:`.datasets`), put on
   the model's grid with the model's intensity recipe. The validation cases are the source's own
   ``val`` split when it has one, else a stratified split (``validation_fraction``), so every class
   is represented; each class needs at least two validation cases and one training case.
2. **Model**: the base bundle's network is *copied* (the base, on disk and in memory, is never
   changed). When the data bring classes the base does not know, the output layers are rebuilt for
   the union of classes (old classes first, in their old order), keeping every other weight and the
   old classes' output weights; the result says so in its ``notes``.
3. **Class imbalance**: ``"class_weight"`` weights each case's loss by
   ``sklearn.utils.class_weight.compute_class_weight("balanced")``; ``"balanced_sampling"`` draws
   every epoch's cases with replacement so each class is drawn equally often; ``"none"``.
4. **Augmentation** on the fly in NumPy/SciPy, kept anatomically plausible: a left-right flip
   (never superior-inferior or anterior-posterior: anatomy is not symmetric that way), a rotation
   of up to 10 degrees in the axial plane with an isotropic scaling of up to 10 %, an intensity
   scale/shift and Gaussian noise, all scaled by ``augment_strength``. Each case knows which of its
   axes is left-right and superior-inferior (from its affine), whatever the acquisition plane.
5. **Early stopping** on validation AUC (validation loss breaks ties), restoring the best epoch's
   weights; then a **temperature** is fitted on the validation logits
   (:func:`~.evaluation.fit_temperature`) and stored in the bundle.
6. **Evaluation** on the validation cases (AUC, accuracy, sensitivity, specificity, ECE before and
   after calibration; the base model's figures on the same cases when fine-tuning), written into
   ``bundle.json`` with the history, and the plots saved as PNG inside the bundle folder. The
   temperature is fitted on the same cases it is judged on, so the calibrated ECE is optimistic.

Nothing is written until training has finished: the bundle and its plots are published in one
atomic step by :func:`~.models.bundle.save_bundle`, so a cancelled or crashed run leaves no half
bundle. Versions are never overwritten: a new bundle takes the next free version number.

Progress and cancelling
-----------------------
``progress`` receives a :class:`TrainingEvent` as cases load, after every batch and after every
epoch. ``cancel`` (a ``threading.Event`` or a function returning True) is checked after every
batch: training stops at the end of the batch during which it was set, and :func:`train` raises
:class:`~.errors.CancelledError`.

Several GPUs
------------
When more than one GPU is visible, training runs data-parallel with no change for the user: each
batch is split across the GPUs and gradients are summed. :func:`data_parallel` holds the
backend-specific part: ``tf.distribute.MirroredStrategy`` on TensorFlow (the model is built,
compiled and fitted in its scope), ``keras.distribution.DataParallel`` on JAX; PyTorch trains on
one device. ``TrainingConfig.devices`` names devices explicitly (the tests use two logical CPUs).
The only other TensorFlow-specific lines feed each epoch through a ``tf.data`` pipeline with
autotuning off (:func:`_fit_epoch` says why).
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np
from matplotlib.figure import Figure
from scipy import ndimage
from scipy.special import log_softmax
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.utils.class_weight import compute_class_weight

from napari_scan_classifier import datasets
from napari_scan_classifier.datasets import LabelledData, Split
from napari_scan_classifier.errors import (
    CancelledError,
    InvalidInputError,
    TrainingError,
)
from napari_scan_classifier.evaluation import (
    EvaluationReport,
    evaluate,
    fit_temperature,
    plot_confusion,
    plot_history,
    plot_reliability,
    plot_roc,
    softmax,
)
from napari_scan_classifier.models import (
    ARCHITECTURES,
    Bundle,
    BundleMetadata,
    derive,
    save_bundle,
)

IMBALANCE_METHODS = ("class_weight", "balanced_sampling", "none")
DEFAULT_INTENSITY: dict[str, dict[str, Any]] = {
    "CT": {"kind": "ct_window", "center": 40.0, "width": 400.0},
    "MR": {"kind": "zscore"},
}
MAX_ROTATION_DEG = 10.0
MAX_SCALING = 0.10
MAX_INTENSITY_SCALE = 0.10
MAX_INTENSITY_SHIFT = 0.05  # in units of the case's intensity SD
MAX_NOISE = 0.05  # Gaussian noise SD, in units of the case's intensity SD
MIN_VALIDATION_PER_CLASS = 2
# Keras' default BatchNorm momentum (0.99) needs hundreds of steps before the moving statistics
# used at inference match the data; a case library of 50 scans gives 6 steps an epoch, and the
# validation logits stay squashed towards zero meanwhile. 0.9 settles within an epoch or two.
BATCHNORM_MOMENTUM = 0.9
_AUC_MIN_DELTA = 1e-4
REFRESH_AUC_TOLERANCE = 0.01  # validation AUC a BatchNorm refresh may cost

CancelFlag = Callable[[], bool] | threading.Event


@dataclass
class TrainingConfig:
    """How to train. Grid, intensity, modality, architecture and width only apply from scratch:
    when fine-tuning, the base bundle fixes them."""

    architecture: str = "cnn3d"
    input_shape: tuple[int, int, int] = (64, 64, 64)
    target_spacing_mm: tuple[float, float, float] | None = None  # None: stretch scan to grid
    modality: str = "CT"
    intensity: dict[str, Any] | None = None  # None: DEFAULT_INTENSITY[modality]
    width: int = 16
    classes: tuple[str, ...] | None = None  # output order from scratch; None: normal-like first
    epochs: int = 30
    batch_size: int = 8
    learning_rate: float = 1e-3
    validation_fraction: float = 0.2
    imbalance: str = "class_weight"
    augment: bool = True
    augment_strength: float = 1.0  # scales every augmentation range; 0 is no augmentation
    patience: int = 8  # epochs without a better validation AUC before stopping
    seed: int = 0
    name: str | None = None  # bundle name; None: the base's, or "scan-classifier"
    devices: tuple[str, ...] | None = None  # None: every visible GPU when there are several

    def __post_init__(self) -> None:
        self.input_shape = tuple(int(n) for n in self.input_shape)  # type: ignore[assignment]
        _require(
            self.architecture in ARCHITECTURES,
            f"architecture must be one of {sorted(ARCHITECTURES)}, not {self.architecture!r}",
        )
        _require(
            len(self.input_shape) == 3 and min(self.input_shape) >= 8,
            "input_shape must be three sizes (D, H, W) of at least 8 voxels",
        )
        _require(self.modality in DEFAULT_INTENSITY, "modality must be 'CT' or 'MR'")
        _require(
            self.epochs >= 1 and self.batch_size >= 1 and self.width >= 1,
            "epochs, batch_size and width must be at least 1",
        )
        _require(self.learning_rate > 0, "learning_rate must be positive")
        _require(0 < self.validation_fraction < 1, "validation_fraction must lie between 0 and 1")
        _require(
            self.imbalance in IMBALANCE_METHODS,
            f"imbalance must be one of {IMBALANCE_METHODS}, not {self.imbalance!r}",
        )
        _require(self.augment_strength >= 0, "augment_strength must not be negative")
        _require(self.patience >= 1, "patience must be at least 1 epoch")


@dataclass(frozen=True)
class TrainingEvent:
    """One progress report. ``kind`` is "load" (``batch`` of ``total`` cases read), "batch"
    (``batch`` of ``total`` batches of ``epoch`` done) or "epoch" (``epoch`` of ``epochs`` done,
    with validation figures). Epochs and batches count from 1."""

    kind: str
    epoch: int
    epochs: int
    batch: int
    total: int
    loss: float | None = None
    val_loss: float | None = None
    val_auc: float | None = None
    best_epoch: int | None = None

    @property
    def message(self) -> str:
        """One line for a status bar or a terminal."""
        if self.kind == "load":
            return f"loading cases {self.batch}/{self.total}"
        text = f"epoch {self.epoch}/{self.epochs}"
        if self.kind == "batch":
            return f"{text} batch {self.batch}/{self.total} loss {self.loss:.4f}"
        return (
            f"{text} loss {self.loss:.4f} val_loss {self.val_loss:.4f} "
            f"val_auc {self.val_auc:.3f} (best epoch {self.best_epoch})"
        )


@dataclass
class TrainingResult:
    """The new model (saved or not yet: ``bundle.path``) and how it got there.

    ``report`` is the calibrated model on the validation cases, ``uncalibrated`` the same before
    temperature scaling, ``base_report`` the base model on the same cases (when fine-tuning
    without new classes). ``notes`` say what the user should know (new classes, early stop).
    """

    bundle: Bundle
    history: dict[str, list[float]]
    report: EvaluationReport
    uncalibrated: EvaluationReport
    base_report: EvaluationReport | None
    class_counts: dict[str, dict[str, int]]
    notes: tuple[str, ...] = ()

    def figures(self) -> dict[str, Figure]:
        """The plots saved with the bundle, by file stem."""
        return {
            "history": plot_history(self.history),
            "roc": plot_roc(self.report),
            "confusion": plot_confusion(self.report),
            "reliability": plot_reliability(self.report),
            "reliability_uncalibrated": plot_reliability(self.uncalibrated),
        }

    def save(self, path: str | Path) -> Path:
        """Write the bundle and its plots to ``path`` in one atomic step (never overwrites)."""
        plots = {f"{name}.png": _png(figure) for name, figure in self.figures().items()}
        target = save_bundle(self.bundle, path, extra_files=plots)
        self.bundle.path = target
        return target


def train(
    source: str | Path | LabelledData,
    config: TrainingConfig | None = None,
    *,
    base: Bundle | None = None,
    out: str | Path | None = None,
    progress: Callable[[TrainingEvent], None] | None = None,
    cancel: CancelFlag | None = None,
) -> TrainingResult:
    """Train on ``source`` (case library folder, ``.npz``, or data already on the model grid).

    From scratch with ``config.architecture``, or fine-tuning a copy of ``base``. With ``out``,
    the new bundle is saved as ``out/<name>-v<version>`` (see :meth:`TrainingResult.save`).
    Raises TrainingError when the data cannot train a model (one class, too few cases, wrong
    grid or modality, unreadable), CancelledError when cancelled; nothing is written then.
    """
    config = config or TrainingConfig()
    stop = _cancel_check(cancel)
    recipe = _recipe(config, base)
    data = _load(source, recipe, progress, stop)
    classes, notes = _model_classes(data, base, config)
    train_cases, val_cases, split_note = _split(data, classes, config)
    counts = {"train": train_cases.counts(classes), "validation": val_cases.counts(classes)}
    base_report = _base_report(base, classes, val_cases, config.batch_size)
    if stop():
        raise CancelledError("Training was cancelled before it started; nothing was saved")
    keras.utils.set_random_seed(config.seed)
    with data_parallel(config.devices) as devices:
        model = _initial_model(recipe, base, classes, config.width)
        fitted = _fit(model, train_cases, val_cases, classes, config, progress, stop)
    if fitted.cancelled:
        raise CancelledError(
            f"Training was cancelled during epoch {fitted.epochs_run + 1}; nothing was saved"
        )
    logits = _logits(model, val_cases.x, config.batch_size)
    temperature = fit_temperature(logits, val_cases.y)
    uncalibrated = evaluate(val_cases.y, softmax(logits), classes)
    report = evaluate(val_cases.y, softmax(logits, temperature), classes)
    notes = [*notes, *fitted.notes(config)]
    info = _training_info(
        data, config, counts, split_note, fitted, report, uncalibrated, base_report, devices, notes
    )
    metadata = _metadata(recipe, base, classes, temperature, info, config, data.description)
    result = TrainingResult(
        Bundle(metadata, model),
        fitted.history,
        report,
        uncalibrated,
        base_report,
        counts,
        tuple(notes),
    )
    if out is not None:
        result.save(_free_bundle_path(Path(out), result))
    return result


def evaluate_bundle(
    bundle: Bundle,
    source: str | Path | LabelledData,
    *,
    split: str | None = None,
    batch_size: int = 8,
) -> EvaluationReport:
    """Measure a bundle on labelled data with its calibration: ``split`` of an npz (default
    test, else val) or every case of a library. Labels must be among the bundle's classes."""
    m = bundle.metadata
    data = source
    if not isinstance(data, LabelledData):
        data = datasets.load_source(source, m.input_shape, m.target_spacing_mm, m.intensity)
    _check_data_fits(data, m.input_shape, m.modality)
    cases = data.split(split)
    y = _remap(cases.y, data.class_names, m.classes)
    if np.any(y < 0):
        unknown = sorted({data.class_names[i] for i in cases.y[y < 0]})
        raise InvalidInputError(
            f"Cases labelled {', '.join(map(repr, unknown))} are not among the model's classes "
            f"{m.classes}; evaluate on data with the model's classes only"
        )
    logits = _logits(bundle.model, cases.x, batch_size)
    return evaluate(y, softmax(logits, m.temperature), m.classes)


@contextlib.contextmanager
def data_parallel(devices: Sequence[str] | None = None) -> Iterator[tuple[str, ...]]:
    """Build, compile and fit inside this to train data-parallel over ``devices`` (default:
    every visible GPU); yields the devices used, ``()`` for one device. Backend-specific."""
    backend = keras.backend.backend()
    if backend not in ("tensorflow", "jax"):  # PyTorch: Keras has no data-parallel distribution
        yield ()
        return
    # list_devices() gives the GPUs where there are some, else the CPUs.
    found = [device for device in keras.distribution.list_devices() if device.startswith("gpu")]
    chosen = tuple(devices) if devices is not None else tuple(found)
    if len(chosen) < 2:
        yield ()
        return
    if backend == "tensorflow":
        import tensorflow as tf

        scope = tf.distribute.MirroredStrategy(list(chosen)).scope()
    else:
        scope = keras.distribution.DataParallel(devices=list(chosen)).scope()
    with scope:
        yield chosen


# -- data --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Recipe:
    """What fixes the model's input: from the base bundle, or from the config from scratch."""

    architecture: str
    input_shape: tuple[int, int, int]
    target_spacing_mm: tuple[float, float, float] | None
    modality: str
    intensity: dict[str, Any]


def _recipe(config: TrainingConfig, base: Bundle | None) -> _Recipe:
    if base is not None:
        m = base.metadata
        return _Recipe(
            m.architecture, m.input_shape, m.target_spacing_mm, m.modality, dict(m.intensity)
        )
    intensity = config.intensity or DEFAULT_INTENSITY[config.modality]
    return _Recipe(
        config.architecture,
        config.input_shape,
        config.target_spacing_mm,
        config.modality,
        dict(intensity),
    )


def _load(
    source: str | Path | LabelledData,
    recipe: _Recipe,
    progress: Callable[[TrainingEvent], None] | None,
    stop: Callable[[], bool],
) -> LabelledData:
    if isinstance(source, LabelledData):
        data = source
    else:

        def loaded(done: int, total: int) -> None:
            if progress is not None:
                progress(TrainingEvent("load", 0, 0, done, total))

        data = datasets.load_source(
            source,
            recipe.input_shape,
            recipe.target_spacing_mm,
            recipe.intensity,
            progress=loaded,
            cancel=stop,
        )
    _check_data_fits(data, recipe.input_shape, recipe.modality)
    return data


def _check_data_fits(data: LabelledData, shape: Sequence[int], modality: str) -> None:
    if tuple(data.shape) != tuple(shape):
        raise TrainingError(
            f"The data ({data.description}) are on a {data.shape} grid but the model takes "
            f"{tuple(shape)}"
        )
    other = [m for m in data.modalities if m != modality]
    if other:
        raise TrainingError(
            f"The data ({data.description}) hold {', '.join(other)} cases but the model is for "
            f"{modality}; use cases of one modality"
        )


def _model_classes(
    data: LabelledData, base: Bundle | None, config: TrainingConfig
) -> tuple[tuple[str, ...], list[str]]:
    """The model's output classes, and notes on classes the base did not know."""
    totals = {name: 0 for name in data.class_names}
    for split in (s for key, s in data.splits.items() if key != "test"):
        for name, n in split.counts(data.class_names).items():
            totals[name] += n
    present = [name for name, n in totals.items() if n > 0]
    if len(present) < 2:
        only = ", ".join(f"'{name}' ({n} cases)" for name, n in totals.items() if n) or "none"
        raise TrainingError(
            f"The training data ({data.description}) have one class only ({only}); a "
            "classifier needs labelled cases of at least two classes"
        )
    if base is None:
        return _scratch_classes(present, config), []
    known = list(base.metadata.classes)
    new = [name for name in present if name not in known]
    if not new:
        return tuple(known), []
    listing = ", ".join(f"'{name}' ({totals[name]} cases)" for name in new)
    note = (
        f"Classes the base model (version {base.metadata.version}) did not know: {listing}. "
        f"Its output layer was rebuilt for {len(known) + len(new)} classes, keeping the "
        "encoder's weights and the old classes' outputs."
    )
    return (*known, *new), [note]


def _scratch_classes(present: list[str], config: TrainingConfig) -> tuple[str, ...]:
    if config.classes is None:
        return tuple(present)
    if sorted(config.classes) != sorted(present):
        raise TrainingError(
            f"The configured classes {list(config.classes)} differ from the classes in the "
            f"data {present}"
        )
    return tuple(config.classes)


def _split(
    data: LabelledData, classes: tuple[str, ...], config: TrainingConfig
) -> tuple[Split, Split, str]:
    """Training and validation cases, labels as indices into ``classes``."""

    def relabel(split: Split) -> Split:
        return Split(split.x, _remap(split.y, data.class_names, classes), split.axes)

    if "train" in data.splits and "val" in data.splits:
        train_cases, val_cases = relabel(data.splits["train"]), relabel(data.splits["val"])
        how = "the source's own validation split"
    else:
        whole = relabel(data.splits[datasets.ALL if datasets.ALL in data.splits else "train"])
        train_cases, val_cases = _stratified(whole, classes, config)
        how = f"stratified split, {config.validation_fraction:.0%} for validation"
    _check_split(train_cases, val_cases, classes, config)
    return train_cases, val_cases, how


def _stratified(
    whole: Split, classes: tuple[str, ...], config: TrainingConfig
) -> tuple[Split, Split]:
    try:
        train_idx, val_idx = train_test_split(
            np.arange(len(whole)),
            test_size=config.validation_fraction,
            stratify=whole.y,
            random_state=config.seed,
        )
    except ValueError:
        raise TrainingError(_too_few(whole.counts(classes), config)) from None
    return whole.subset(np.sort(train_idx)), whole.subset(np.sort(val_idx))


def _check_split(
    train_cases: Split, val_cases: Split, classes: tuple[str, ...], config: TrainingConfig
) -> None:
    train_counts, val_counts = train_cases.counts(classes), val_cases.counts(classes)
    for name in classes:
        total = train_counts[name] + val_counts[name]
        if total and (val_counts[name] < MIN_VALIDATION_PER_CLASS or train_counts[name] < 1):
            totals = {c: train_counts[c] + val_counts[c] for c in classes}
            raise TrainingError(_too_few(totals, config, val_counts))


def _too_few(
    totals: Mapping[str, int], config: TrainingConfig, val: Mapping[str, int] | None = None
) -> str:
    listing = ", ".join(f"'{name}': {n}" for name, n in totals.items() if n)
    got = (
        ""
        if val is None
        else (
            " (validation: " + ", ".join(f"'{c}': {n}" for c, n in val.items() if totals[c]) + ")"
        )
    )
    return (
        f"Too few cases to train and validate: every class needs at least "
        f"{MIN_VALIDATION_PER_CLASS} validation cases and one training case; cases per class "
        f"{listing}{got}, validation fraction {config.validation_fraction:g}. Add cases or raise "
        "the validation fraction"
    )


def _remap(y: np.ndarray, source_names: Sequence[str], target_names: Sequence[str]) -> np.ndarray:
    """Label indices into ``source_names`` as indices into ``target_names`` (-1: not there)."""
    lookup = np.array(
        [list(target_names).index(n) if n in target_names else -1 for n in source_names], dtype=int
    )
    return lookup[y]


# -- model -------------------------------------------------------------------------------------


def _initial_model(
    recipe: _Recipe, base: Bundle | None, classes: tuple[str, ...], width: int
) -> keras.Model:
    if base is None:
        build = ARCHITECTURES[recipe.architecture]
        model = build((*recipe.input_shape, 1), len(classes), width=width)
    else:
        model = _copy_with_classes(base.model, len(base.metadata.classes), len(classes))
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = BATCHNORM_MOMENTUM
    return model


def _copy_with_classes(model: keras.Model, n_old: int, n_new: int) -> keras.Model:
    """A copy of ``model`` whose output layers have ``n_new`` units; every weight is copied,
    output layers into their first ``n_old`` units (new units keep their fresh initialisation)."""
    config = model.get_config()
    # Each output is [layer name, node, tensor]: the names are the strings among the leaves.
    heads = {leaf for leaf in keras.tree.flatten(config["output_layers"]) if isinstance(leaf, str)}
    for layer in config["layers"]:
        if layer["config"]["name"] in heads:
            layer["config"]["units"] = n_new
    copy = keras.Model.from_config(config)
    for layer in copy.layers:
        old = model.get_layer(layer.name).get_weights()
        if layer.name in heads and n_new != n_old:
            fresh = layer.get_weights()
            for new_value, old_value in zip(fresh, old, strict=True):
                new_value[..., :n_old] = old_value
            old = fresh
        layer.set_weights(old)
    return copy


def _logits(model: keras.Model, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Volume logits (N, classes) for arrays (N, D, H, W), calling the model batch by batch:
    no input pipeline (see :func:`_fit_epoch`), and under a strategy each case once (its
    ``predict_on_batch`` gives every replica the whole batch)."""
    chunks = []
    for start in range(0, len(x), batch_size):
        outputs = model(x[start : start + batch_size, ..., None], training=False)
        logits = outputs["volume"] if isinstance(outputs, dict) else outputs
        chunks.append(keras.ops.convert_to_numpy(logits))
    return np.concatenate(chunks).astype(float)


def _base_report(
    base: Bundle | None, classes: tuple[str, ...], val_cases: Split, batch_size: int
) -> EvaluationReport | None:
    if base is None or len(base.metadata.classes) != len(classes):
        return None
    logits = _logits(base.model, val_cases.x, batch_size)
    return evaluate(val_cases.y, softmax(logits, base.metadata.temperature), classes)


# -- fitting -----------------------------------------------------------------------------------


class _Epochs:
    """Each epoch's training cases as arrays ``(x, y, sample_weight)``: a new order and new
    augmentations every epoch, whole batches only.

    Arrays, not a ``keras.utils.PyDataset``: Keras reads a PyDataset through its own autotuned
    ``tf.data`` pipeline, which hung on TF 2.21 (see :func:`_fit_epoch`), and arrays are split
    across devices under a strategy as they are. An epoch's augmented copy costs one more array
    of the training set in memory. Randomness comes from (seed, epoch, position), so runs repeat.
    The last partial batch is dropped (a different one each epoch) so BatchNorm never sees a
    batch of one.
    """

    def __init__(self, cases: Split, config: TrainingConfig) -> None:
        self.cases = cases
        self.config = config
        self.batch_size = min(config.batch_size, len(cases))
        self.n_batches = len(cases) // self.batch_size
        self.class_weights = _class_weights(cases.y, config.imbalance)

    def arrays(
        self, epoch: int, stop: Callable[[], bool]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The epoch's (x, y, sample_weight); None when ``stop`` says so while augmenting."""
        rows = self._order(epoch)[: self.n_batches * self.batch_size]
        x = np.empty((len(rows), *self.cases.x.shape[1:], 1), dtype=np.float32)
        for position, row in enumerate(rows):
            if stop():
                return None
            x[position, ..., 0] = self._volume(epoch, position, row)
        y = self.cases.y[rows]
        weights = np.array([self.class_weights.get(int(c), 1.0) for c in y], dtype=np.float32)
        return x, y, weights

    def _order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.config.seed, epoch])
        n = len(self.cases)
        if self.config.imbalance != "balanced_sampling":
            return rng.permutation(n)
        per_class = np.bincount(self.cases.y)
        p = 1.0 / per_class[self.cases.y]
        return rng.choice(n, size=n, replace=True, p=p / p.sum())

    def _volume(self, epoch: int, position: int, row: int) -> np.ndarray:
        volume = self.cases.x[row]
        if not self.config.augment or self.config.augment_strength == 0:
            return volume
        rng = np.random.default_rng([self.config.seed, epoch, position, 1])
        return augment(volume, tuple(self.cases.axes[row]), rng, self.config.augment_strength)


def _class_weights(y: np.ndarray, method: str) -> dict[int, float]:
    if method != "class_weight":
        return {}
    present = np.unique(y)
    weights = compute_class_weight("balanced", classes=present, y=y)
    return {int(c): float(w) for c, w in zip(present, weights, strict=True)}


def augment(
    volume: np.ndarray, axes: Sequence[int], rng: np.random.Generator, strength: float = 1.0
) -> np.ndarray:
    """One random, anatomically plausible variant of a (D, H, W) volume (see module doc).

    ``axes`` are the volume's (superior-inferior, left-right) array axes.
    """
    si_axis, lr_axis = int(axes[0]), int(axes[1])
    out = np.flip(volume, axis=lr_axis) if rng.random() < 0.5 else volume
    angle = rng.uniform(-1, 1) * MAX_ROTATION_DEG * strength
    scale = 1.0 + rng.uniform(-1, 1) * MAX_SCALING * strength
    out = _rotate_and_scale(out, si_axis, angle, scale)
    spread = float(out.std()) or 1.0
    gain = 1.0 + rng.uniform(-1, 1) * MAX_INTENSITY_SCALE * strength
    shift = rng.uniform(-1, 1) * MAX_INTENSITY_SHIFT * strength * spread
    noise = rng.standard_normal(out.shape, dtype=np.float32)
    noise *= np.float32(rng.uniform(0, MAX_NOISE * strength) * spread)
    return (out * np.float32(gain) + np.float32(shift) + noise).astype(np.float32, copy=False)


def _rotate_and_scale(volume: np.ndarray, si_axis: int, degrees: float, scale: float) -> np.ndarray:
    """Rotate about the superior-inferior axis and zoom by ``scale``, about the centre."""
    a, b = (axis for axis in range(3) if axis != si_axis)
    theta = math.radians(degrees)
    matrix = np.eye(3)
    matrix[a, a] = matrix[b, b] = math.cos(theta)
    matrix[a, b], matrix[b, a] = -math.sin(theta), math.sin(theta)
    matrix /= scale  # output -> input coordinates: scale > 1 samples a smaller region
    centre = (np.asarray(volume.shape, dtype=float) - 1) / 2
    offset = centre - matrix @ centre
    return ndimage.affine_transform(volume, matrix, offset=offset, order=1, mode="nearest")


@dataclass
class _Fitted:
    """What came out of ``fit``: history, best epoch, and why it stopped."""

    history: dict[str, list[float]] = field(
        default_factory=lambda: {"loss": [], "val_loss": [], "val_auc": []}
    )
    best_epoch: int = 0
    stopped_early: bool = False
    cancelled: bool = False
    class_weights: dict[int, float] = field(default_factory=dict)

    @property
    def epochs_run(self) -> int:
        return len(self.history["loss"])

    def notes(self, config: TrainingConfig) -> list[str]:
        if not self.stopped_early:
            return []
        return [
            f"Stopped after epoch {self.epochs_run} of {config.epochs}: no better validation "
            f"AUC for {config.patience} epochs; the weights of epoch {self.best_epoch} are kept."
        ]


class _Monitor(keras.callbacks.Callback):
    """Progress, cancelling (checked after every batch), and early stopping on validation AUC
    with the best weights kept (validation loss breaks ties)."""

    def __init__(
        self,
        val_cases: Split,
        config: TrainingConfig,
        n_batches: int,
        progress: Callable[[TrainingEvent], None] | None,
        stop: Callable[[], bool],
    ) -> None:
        super().__init__()
        self.val_cases = val_cases
        self.config = config
        self.n_batches = n_batches
        self.progress = progress or (lambda event: None)
        self.stop = stop
        self.fitted = _Fitted()
        self.best: tuple[float, float] = (-math.inf, math.inf)
        self.best_weights: list[np.ndarray] | None = None
        self.waited = 0

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        epoch = self.fitted.epochs_run + 1
        loss = float((logs or {}).get("loss", math.nan))
        self.progress(
            TrainingEvent("batch", epoch, self.config.epochs, batch + 1, self.n_batches, loss)
        )
        if self.stop():
            self.fitted.cancelled = True
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        if self.fitted.cancelled:
            return
        logits = _logits(self.model, self.val_cases.x, self.config.batch_size)
        val_loss = float(
            -log_softmax(logits, axis=1)[np.arange(len(logits)), self.val_cases.y].mean()
        )
        val_auc = _present_class_auc(self.val_cases.y, softmax(logits))
        history = self.fitted.history
        history["loss"].append(float((logs or {}).get("loss", math.nan)))
        history["val_loss"].append(val_loss)
        history["val_auc"].append(val_auc)
        self._keep_if_best(epoch + 1, val_auc, val_loss)
        self.progress(
            TrainingEvent(
                "epoch",
                epoch + 1,
                self.config.epochs,
                self.n_batches,
                self.n_batches,
                history["loss"][-1],
                val_loss,
                val_auc,
                self.fitted.best_epoch,
            )
        )

    def restore_best(self) -> None:
        """Put back the weights of the best epoch (after the last epoch has run)."""
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)

    def _keep_if_best(self, epoch: int, auc: float, loss: float) -> None:
        best_auc, best_loss = self.best
        if auc > best_auc + _AUC_MIN_DELTA or (
            auc >= best_auc - _AUC_MIN_DELTA and loss < best_loss
        ):
            self.best = (auc, loss)
            self.best_weights = self.model.get_weights()
            self.fitted.best_epoch = epoch
            self.waited = 0
            return
        self.waited += 1
        if self.waited >= self.config.patience:
            self.fitted.stopped_early = True
            self.model.stop_training = True


def _present_class_auc(y: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean one-vs-rest AUC over the classes that have validation cases (binary: the AUC)."""
    present = np.unique(y)
    return float(np.mean([roc_auc_score(y == c, probabilities[:, c]) for c in present]))


def _fit(
    model: keras.Model,
    train_cases: Split,
    val_cases: Split,
    classes: tuple[str, ...],
    config: TrainingConfig,
    progress: Callable[[TrainingEvent], None] | None,
    stop: Callable[[], bool],
) -> _Fitted:
    """Fit the volume output (a per-slice output has no labels to learn from), one ``fit`` call
    per epoch on that epoch's arrays."""
    trainer = keras.Model(model.input, model.output["volume"])
    trainer.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=_use_xla(),
    )
    epochs = _Epochs(train_cases, config)
    monitor = _Monitor(val_cases, config, epochs.n_batches, progress, stop)
    for epoch in range(config.epochs):
        arrays = epochs.arrays(epoch, stop)
        if arrays is None:
            monitor.fitted.cancelled = True
            break
        _fit_epoch(trainer, arrays, epochs.batch_size, epoch, monitor)
        if monitor.fitted.cancelled or monitor.fitted.stopped_early:
            break
    if not monitor.fitted.cancelled:
        monitor.restore_best()
        _refresh_unless_worse(model, train_cases.x, val_cases, epochs.batch_size)
    monitor.fitted.class_weights = epochs.class_weights
    return monitor.fitted


def refresh_batchnorm(model: keras.Model, x: np.ndarray, batch_size: int) -> None:
    """Set every BatchNormalization layer's moving statistics to the training cases' own
    (un-augmented), averaged over batches of ``batch_size``.

    Why: the moving averages trail weights that kept changing, and the best epoch's weights were
    restored without their statistics. The lag shifts every logit at inference by the same bias,
    which temperature scaling cannot undo: on the demo phantoms the validation accuracy at the
    0.5 threshold went from 0.58 to 0.74 after this, at the same AUC.
    """
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    try:
        for count, start in enumerate(range(0, len(x) - batch_size + 1, batch_size), start=1):
            for layer in norms:
                layer.momentum = 1.0 - 1.0 / count  # a running mean over the batches
            model(x[start : start + batch_size, ..., None], training=True)
    finally:
        for layer, momentum in zip(norms, momenta, strict=True):
            layer.momentum = momentum


def _refresh_unless_worse(
    model: keras.Model, x: np.ndarray, val_cases: Split, batch_size: int
) -> None:
    """:func:`refresh_batchnorm`, undone when it ranks the validation cases worse (AUC lower by
    more than :data:`REFRESH_AUC_TOLERANCE`): the epoch was chosen with the old statistics, and
    a tiny network on a few cases can depend on them."""
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [layer.get_weights() for layer in norms]
    before = _val_auc(model, val_cases, batch_size)
    refresh_batchnorm(model, x, batch_size)
    if _val_auc(model, val_cases, batch_size) < before - REFRESH_AUC_TOLERANCE:
        for layer, weights in zip(norms, saved, strict=True):
            layer.set_weights(weights)


def _val_auc(model: keras.Model, val_cases: Split, batch_size: int) -> float:
    return _present_class_auc(val_cases.y, softmax(_logits(model, val_cases.x, batch_size)))


def _use_xla() -> bool | str:
    """XLA under TensorFlow even on a CPU, where Keras' "auto" leaves it off: TensorFlow's own 3D
    convolution gradients are several times slower there. Not under a MirroredStrategy, whose
    cross-device reductions XLA does not compile; "auto" on the other backends (JAX compiles
    anyway; PyTorch would go through torch.compile)."""
    if keras.backend.backend() != "tensorflow":
        return "auto"
    import tensorflow as tf

    return not tf.distribute.has_strategy()


def _fit_epoch(
    trainer: keras.Model,
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray],
    batch_size: int,
    epoch: int,
    monitor: keras.callbacks.Callback,
) -> None:
    """One epoch of ``fit``. On TensorFlow the batches go through a ``tf.data`` pipeline with
    autotuning off: with Keras' own (autotuned) pipeline, TF 2.21 hung for good on a 2-core
    machine, destroying an iterator while waiting for the autotuning thread."""
    run = {"epochs": epoch + 1, "initial_epoch": epoch, "verbose": 0, "callbacks": [monitor]}
    run["shuffle"] = False  # _Epochs has ordered the cases
    if keras.backend.backend() != "tensorflow":
        x, y, weights = arrays
        trainer.fit(x, y, sample_weight=weights, batch_size=batch_size, **run)
        return
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    batches = tf.data.Dataset.from_tensor_slices(arrays).batch(batch_size)
    trainer.fit(batches.with_options(options), **run)


# -- the new bundle ----------------------------------------------------------------------------


def _training_info(
    data: LabelledData,
    config: TrainingConfig,
    counts: dict[str, dict[str, int]],
    split_note: str,
    fitted: _Fitted,
    report: EvaluationReport,
    uncalibrated: EvaluationReport,
    base_report: EvaluationReport | None,
    devices: tuple[str, ...],
    notes: list[str],
) -> dict[str, Any]:
    """What bundle.json records about this training run (no paths, no patient data)."""
    settings = asdict(config)
    for key in (
        "architecture",
        "input_shape",
        "target_spacing_mm",
        "modality",
        "intensity",
        "name",
        "devices",
        "classes",
    ):
        settings.pop(key)
    metrics = {"validation": {**_metrics(report), "ece_before_calibration": uncalibrated.ece}}
    if base_report is not None:
        metrics["validation_base_model"] = _metrics(base_report)
    weights = {report.class_names[c]: round(w, 4) for c, w in fitted.class_weights.items()}
    return {
        "data": data.description,
        "validation": split_note,
        "class_counts": counts,
        "class_weights": weights,
        "settings": settings,
        "epochs_run": fitted.epochs_run,
        "best_epoch": fitted.best_epoch,
        "history": {k: [round(v, 5) for v in values] for k, values in fitted.history.items()},
        "metrics": metrics,
        "devices": list(devices),
        "notes": notes,
    }


def _metrics(report: EvaluationReport) -> dict[str, Any]:
    summary = report.to_dict()
    return {
        key: summary[key] for key in ("n", "auc", "accuracy", "sensitivity", "specificity", "ece")
    }


def _metadata(
    recipe: _Recipe,
    base: Bundle | None,
    classes: tuple[str, ...],
    temperature: float,
    info: dict[str, Any],
    config: TrainingConfig,
    description: str,
) -> BundleMetadata:
    auc = info["metrics"]["validation"]["auc"]
    if base is not None:
        old = base.metadata
        card = (
            f"{old.model_card}\n\n## Fine-tuned from version {old.version}\nOn {description}; "
            f"validation AUC {auc}."
        ).strip()
        return derive(
            old,
            name=config.name or old.name,
            classes=list(classes),
            temperature=temperature,
            training=info,
            model_card=card,
        )
    return BundleMetadata(
        name=config.name or "scan-classifier",
        version=1,
        classes=list(classes),
        modality=recipe.modality,
        task="volume",
        input_shape=recipe.input_shape,
        target_spacing_mm=recipe.target_spacing_mm,
        intensity=recipe.intensity,
        architecture=recipe.architecture,
        temperature=temperature,
        training=info,
        description=f"{recipe.architecture} trained on {description}",
        model_card=(
            f"Trained from scratch on {description}; validation AUC {auc}. A research model: "
            "check it on your own held-out cases before relying on it."
        ),
    )


def _free_bundle_path(out: Path, result: TrainingResult) -> Path:
    """``out/<name>-v<version>``, raising the version until the folder name is free."""
    metadata = result.bundle.metadata
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", metadata.name).strip("._") or "model"
    version = metadata.version
    while (out / f"{stem}-v{version}").exists():
        version += 1
    if version != metadata.version:
        result.bundle.metadata = replace(metadata, version=version)
    return out / f"{stem}-v{version}"


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _cancel_check(cancel: CancelFlag | None) -> Callable[[], bool]:
    if cancel is None:
        return lambda: False
    if isinstance(cancel, threading.Event):
        return cancel.is_set
    return cancel


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise TrainingError(f"Training settings: {message}")
