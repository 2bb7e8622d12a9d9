"""What a training run is told (:class:`TrainingConfig`) and what it reports as it goes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from napari_scan_classifier.errors import (
    TrainingError,
)
from napari_scan_classifier.models import (
    ARCHITECTURES,
)

IMBALANCE_METHODS = ("class_weight", "balanced_sampling", "none")
DEFAULT_INTENSITY: dict[str, dict[str, Any]] = {
    "CT": {"kind": "ct_window", "center": 40.0, "width": 400.0},
    "MR": {"kind": "zscore"},
}


MIN_VALIDATION_PER_CLASS = 2
# Keras' default BatchNorm momentum (0.99) needs hundreds of steps before the moving statistics
# used at inference match the data; a case library of 50 scans gives 6 steps an epoch, and the
# validation logits stay squashed towards zero meanwhile. 0.9 settles within an epoch or two.
BATCHNORM_MOMENTUM = 0.9


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
    label_names: tuple[str, ...] | None = None  # an npz's label indices 0, 1, ... by name
    allow_new_classes: bool = False  # fine-tuning: may the data add classes the base lacks?
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
    # two classes: call the second one at the threshold that keeps this validation sensitivity
    # (None: the most probable class after calibration)
    target_sensitivity: float | None = None
    # share of in-distribution validation scans the applicability check may turn away
    false_abstention_rate: float = 0.05
    # answer with the mean logits of the scan and its left-right mirror image (see inference.py);
    # None: as the base does, off from scratch
    test_time_mirror: bool | None = None

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
        _require(
            self.target_sensitivity is None or 0 < self.target_sensitivity < 1,
            "target_sensitivity must lie between 0 and 1",
        )
        _require(
            0 < self.false_abstention_rate < 0.5,
            "false_abstention_rate must lie between 0 and 0.5",
        )


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


def cancel_check(cancel: CancelFlag | None) -> Callable[[], bool]:
    if cancel is None:
        return lambda: False
    if isinstance(cancel, threading.Event):
        return cancel.is_set
    return cancel


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise TrainingError(f"Training settings: {message}")
