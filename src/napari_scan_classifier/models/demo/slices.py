"""A first MR training stage that tells ``slice_gru`` *which slices* hold the lesion: brain
phantoms come with their lesion masks, so each slice of the model grid gets its own label (the
scan's lesion class where a lesion voxel lies in it, ``normal`` elsewhere), and the network's
per-slice logits learn it beside the scan's label.

Why: with the scan's label alone, the network stayed near chance on T1-like scans (held-out macro
AUC 0.55 there, 0.98 on FLAIR-like ones) and on small lesions (0.57): a lesion is a few of the
24 x 96 x 96 voxels, and the scan's label does not say where to look. The CT demo's lesion-mask
stage (:mod:`.localise`) lifted its ranking the same way. The stages after this one fine-tune
through the ordinary training pipeline on scan labels alone, as a user's data would.

Tried and not adopted: labels per cell of each slice (8 x 8 pixels, from the same mask) on a
linear per-cell score map before the slice maximum, as ``cnn3d_mil`` has, for the whole recipe.
Faster at first (validation AUC 0.691 against 0.609 after 8 epochs), it ended level: held-out
macro AUC 0.916 clear and 0.611 subtle against version 6's 0.902 and 0.653, and on 300 fresh
phantoms per set (``benchmarks/bench_demo_mr.py``) differences of -0.007 and -0.005, 95 %
intervals across zero. Both leave T1-like infarcts at chance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import keras
import numpy as np
from keras import ops

from napari_scan_classifier.datasets import LabelledData
from napari_scan_classifier.models.bundle import Bundle
from napari_scan_classifier.models.demo.common import Grid
from napari_scan_classifier.models.demo.mask_stage import (
    SlidingChunks,
    StageRun,
    fresh_model,
    train_stage,
)
from napari_scan_classifier.phantoms import Phantom
from napari_scan_classifier.preprocess import prepare, resample_to_grid

ARCHITECTURE = "slice_gru"
STAGE_NAME = "slices"
LESION_SLICE_WEIGHT = 4.0  # a slice through a lesion weighs as much as this many without
LESION_FRACTION = 0.5  # a model voxel belongs to the lesion when it lies mostly inside it


def slice_labelled(
    phantoms: Iterable[Phantom], grid: Grid
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model-grid arrays (N, D, H, W), scan labels (N,) and slice labels (N, D): the scan's
    class index on slices with a lesion voxel, 0 (``normal``) on the others."""
    arrays, labels, slice_labels = [], [], []
    for phantom in phantoms:
        array, model_grid = prepare(phantom.volume, grid.input_shape, grid.spacing, grid.intensity)
        lesion = resample_to_grid(np.asarray(phantom.lesion_mask, np.float32), model_grid, 0.0)
        label = grid.classes.index(phantom.class_name)
        on_slice = (lesion > LESION_FRACTION).any(axis=(1, 2))
        arrays.append(array)
        labels.append(label)
        slice_labels.append(np.where(on_slice, label, 0))
    return np.stack(arrays), np.array(labels), np.stack(slice_labels)


def _slice_loss(target: Any, logits: Any) -> Any:
    """Cross-entropy of every slice's logits, slices through a lesion weighted up."""
    target = ops.cast(target, "int32")
    loss = keras.losses.sparse_categorical_crossentropy(target, logits, from_logits=True)
    weight = 1.0 + (LESION_SLICE_WEIGHT - 1.0) * ops.cast(target > 0, loss.dtype)
    return ops.mean(loss * weight)


def train_slice_localised(
    training: Callable[[int], Iterable[Phantom]],
    validation: LabelledData,
    grid: Grid,
    run: StageRun,
    *,
    base: Bundle | None = None,
    name: str = STAGE_NAME,
) -> Bundle:
    """A ``slice_gru`` trained on the scan and slice labels (see the module doc) of each
    epoch's phantoms, ``training(epoch)``, from scratch or from ``base``'s network, as a
    version-1 bundle whose lineage holds ``base``'s stages and this one. Fresh phantoms every
    epoch: on the same 360 phantoms for 24 epochs, the training scan loss kept falling (1.16 to
    0.52) while the validation AUC peaked at 0.72 by epoch 16 and fell back (0.69 at the end):
    the network learned those phantoms, not the lesions."""
    model = fresh_model(ARCHITECTURE, grid, run.width, run.seed) if base is None else base.model
    twin = keras.Model(model.input, model.output)

    def chunk(number: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        x, y, slice_y = slice_labelled(training(number), grid)
        return x, {"volume": y, "slices": slice_y}

    return train_stage(
        model,
        twin,
        _slice_loss,
        SlidingChunks(chunk, 1),
        "slices",
        validation,
        grid,
        run,
        name=name,
        modality="MR",
        architecture=ARCHITECTURE,
        earlier=() if base is None else base.metadata.training.get("stages", ()),
    )
