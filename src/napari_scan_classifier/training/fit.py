"""Fitting: each epoch's cases, early stopping on validation AUC, BatchNorm refresh."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
from scipy.special import log_softmax
from sklearn.metrics import roc_auc_score
from sklearn.utils.class_weight import compute_class_weight

from napari_scan_classifier.datasets import Split
from napari_scan_classifier.evaluation import (
    softmax,
)
from napari_scan_classifier.training.augment import augment
from napari_scan_classifier.training.config import TrainingConfig, TrainingEvent
from napari_scan_classifier.training.model import volume_logits

_AUC_MIN_DELTA = 1e-4
REFRESH_AUC_TOLERANCE = 0.01  # validation AUC a BatchNorm refresh may cost


class Epochs:
    """Each epoch's training cases as arrays ``(x, y, sample_weight)``: a new order and new
    augmentations every epoch, whole batches only.

    Arrays, not a ``keras.utils.PyDataset``: Keras reads a PyDataset through its own autotuned
    ``tf.data`` pipeline, which hung on TF 2.21 (see :func:`fit_epoch`), and arrays are split
    across devices under a strategy as they are. An epoch's augmented copy costs one more array
    of the training set in memory. Randomness comes from (seed, epoch, position), so runs repeat.
    The last partial batch is dropped (a different one each epoch) so BatchNorm never sees a
    batch of one.
    """

    def __init__(
        self, cases: Split, config: TrainingConfig, intensity: Mapping[str, Any] | None = None
    ) -> None:
        self.cases = cases
        self.config = config
        self.intensity = intensity
        self.batch_size = min(config.batch_size, len(cases))
        self.n_batches = len(cases) // self.batch_size
        self.class_weights = balanced_weights(cases.y, config.imbalance)

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
        return augment(
            volume, tuple(self.cases.axes[row]), rng, self.config.augment_strength, self.intensity
        )


def balanced_weights(y: np.ndarray, method: str) -> dict[int, float]:
    if method != "class_weight":
        return {}
    present = np.unique(y)
    weights = compute_class_weight("balanced", classes=present, y=y)
    return {int(c): float(w) for c, w in zip(present, weights, strict=True)}


@dataclass
class Fitted:
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
        mirror: bool,
    ) -> None:
        super().__init__()
        self.val_cases = val_cases
        self.mirror = mirror
        self.config = config
        self.n_batches = n_batches
        self.progress = progress or (lambda event: None)
        self.stop = stop
        self.fitted = Fitted()
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
        logits = volume_logits(
            self.model, self.val_cases.x, self.config.batch_size, mirror=self.mirror
        )
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


def fit_model(
    model: keras.Model,
    train_cases: Split,
    val_cases: Split,
    classes: tuple[str, ...],
    config: TrainingConfig,
    progress: Callable[[TrainingEvent], None] | None,
    stop: Callable[[], bool],
    intensity: Mapping[str, Any] | None = None,
    *,
    mirror: bool = False,
) -> Fitted:
    """Fit the volume output (a per-slice output has no labels to learn from), one ``fit`` call
    per epoch on that epoch's arrays (augmented by ``intensity``'s recipe, see
    :func:`~napari_scan_classifier.training.augment.augment`). Epochs are judged on the answer
    the bundle will give: with ``mirror``, the mean of each validation scan's and its mirror
    image's logits."""
    trainer = keras.Model(model.input, model.output["volume"])
    trainer.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=_use_xla(),
    )
    epochs = Epochs(train_cases, config, intensity)
    monitor = _Monitor(val_cases, config, epochs.n_batches, progress, stop, mirror)
    for epoch in range(config.epochs):
        arrays = epochs.arrays(epoch, stop)
        if arrays is None:
            monitor.fitted.cancelled = True
            break
        fit_epoch(trainer, arrays, epochs.batch_size, epoch, monitor)
        if monitor.fitted.cancelled or monitor.fitted.stopped_early:
            break
    if not monitor.fitted.cancelled:
        monitor.restore_best()
        _refresh_unless_worse(model, train_cases.x, val_cases, epochs.batch_size, mirror)
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
    model: keras.Model, x: np.ndarray, val_cases: Split, batch_size: int, mirror: bool
) -> None:
    """:func:`refresh_batchnorm`, undone when it ranks the validation cases worse (AUC lower by
    more than :data:`REFRESH_AUC_TOLERANCE`): the epoch was chosen with the old statistics, and
    a tiny network on a few cases can depend on them."""
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [layer.get_weights() for layer in norms]
    before = _val_auc(model, val_cases, batch_size, mirror)
    refresh_batchnorm(model, x, batch_size)
    if _val_auc(model, val_cases, batch_size, mirror) < before - REFRESH_AUC_TOLERANCE:
        for layer, weights in zip(norms, saved, strict=True):
            layer.set_weights(weights)


def _val_auc(model: keras.Model, val_cases: Split, batch_size: int, mirror: bool) -> float:
    logits = volume_logits(model, val_cases.x, batch_size, mirror=mirror)
    return _present_class_auc(val_cases.y, softmax(logits))


def _use_xla() -> bool | str:
    """XLA under TensorFlow even on a CPU, where Keras' "auto" leaves it off: TensorFlow's own 3D
    convolution gradients are several times slower there. Not under a MirroredStrategy, whose
    cross-device reductions XLA does not compile; "auto" on the other backends (JAX compiles
    anyway; PyTorch would go through torch.compile)."""
    if keras.backend.backend() != "tensorflow":
        return "auto"
    import tensorflow as tf

    return not tf.distribute.has_strategy()


def fit_epoch(
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
    run["shuffle"] = False  # Epochs has ordered the cases
    if keras.backend.backend() != "tensorflow":
        x, y, weights = arrays
        trainer.fit(x, y, sample_weight=weights, batch_size=batch_size, **run)
        return
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    batches = tf.data.Dataset.from_tensor_slices(arrays).batch(batch_size)
    trainer.fit(batches.with_options(options), **run)
