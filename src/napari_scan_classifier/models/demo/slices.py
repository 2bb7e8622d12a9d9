"""An MR training stage on whole scans that tells a slice network *which slices* hold the
lesion: brain phantoms come with their lesion masks, so each slice of the model grid gets its own
label (the scan's lesion class where a lesion voxel lies in it, ``normal`` elsewhere), and the
network's per-slice logits learn it beside the scan's label. In the MR demo it is the ``scans``
stage, after the slice encoder learnt the lesions on balanced slices (:mod:`.lesion_slices`);
versions 4-6 (``slice_gru``) began with it.

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
from napari_scan_classifier.models.architectures import PIXEL_LOGITS_LAYER
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
LESION_PIXEL_WEIGHT = 10.0  # a lesion pixel weighs as much as this many outside
LESION_FRACTION = 0.5  # a model voxel belongs to the lesion when it lies mostly inside it


def pixel_labelled(
    phantoms: Iterable[Phantom], grid: Grid
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model-grid arrays (N, D, H, W), scan labels (N,) and voxel labels (N, D, H, W): the
    scan's class index on lesion voxels, 0 (``normal``) on the others."""
    arrays, labels, voxel_labels = [], [], []
    for phantom in phantoms:
        array, model_grid = prepare(phantom.volume, grid.input_shape, grid.spacing, grid.intensity)
        lesion = resample_to_grid(np.asarray(phantom.lesion_mask, np.float32), model_grid, 0.0)
        label = grid.classes.index(phantom.class_name)
        arrays.append(array)
        labels.append(label)
        voxel_labels.append(np.where(lesion > LESION_FRACTION, label, 0).astype(np.int8))
    return np.stack(arrays), np.array(labels), np.stack(voxel_labels)


def slice_labels(voxel_labels: np.ndarray) -> np.ndarray:
    """(N, D): each slice's lesion class, 0 (``normal``) on slices without a lesion voxel."""
    return voxel_labels.max(axis=(2, 3))


def weighted_loss(lesion_weight: float) -> Callable[[Any, Any], Any]:
    """Cross-entropy of every slice's (or pixel's) logits, those in a lesion weighted up."""

    def loss(target: Any, logits: Any) -> Any:
        target = ops.cast(target, "int32")
        entropy = keras.losses.sparse_categorical_crossentropy(target, logits, from_logits=True)
        weight = 1.0 + (lesion_weight - 1.0) * ops.cast(target > 0, entropy.dtype)
        return ops.mean(entropy * weight)

    return loss


def train_slice_localised(
    training: Callable[[int], Iterable[Phantom]],
    validation: LabelledData,
    grid: Grid,
    run: StageRun,
    *,
    base: Bundle | None = None,
    architecture: str = ARCHITECTURE,
    name: str = STAGE_NAME,
    train_encoder: bool = True,
) -> Bundle:
    """A slice network (``architecture``, or ``base``'s network) trained on the scan and slice
    labels (see the module doc) of each epoch's phantoms, ``training(epoch)``, and on the voxel
    labels too where it has per-pixel logits (``slice_unet_gru``), as a version-1 bundle whose
    lineage holds ``base``'s stages and this one. Fresh phantoms every epoch: on the same 360
    phantoms for 24 epochs, the training scan loss kept falling (1.16 to 0.52) while the
    validation AUC peaked at 0.72 by epoch 16 and fell back (0.69 at the end): the network
    learned those phantoms, not the lesions. ``train_encoder=False`` keeps a per-pixel
    encoder as it is (trained on balanced slices, :mod:`.lesion_slices`) and trains what
    follows it: on whole scans it lost what it had learnt of T1-like tumours (AUC by the head's
    highest logit 0.78 to 0.71 in 4 epochs). Its batch normalisation stays frozen afterwards,
    at the balanced slices' statistics, for every later training (the recipe's last stage, a
    user's fine-tuning): re-estimated on whole scans, it took the validation AUC from 0.827 to
    0.786 (0.791 after one epoch of the last stage at 1e-5), and the stage trained after such a
    re-estimate reached 0.773."""
    if base is not None:
        architecture = base.metadata.architecture
    model = fresh_model(architecture, grid, run.width, run.seed) if base is None else base.model
    outputs = dict(model.output)
    losses = {"slices": weighted_loss(LESION_SLICE_WEIGHT)}
    by_pixel = PIXEL_LOGITS_LAYER in {layer.name for layer in model.layers}
    frozen = pixel_encoder(model) if by_pixel and not train_encoder else []
    if by_pixel and train_encoder:
        outputs["pixels"] = model.get_layer(PIXEL_LOGITS_LAYER).output
        losses["pixels"] = weighted_loss(LESION_PIXEL_WEIGHT)
    twin = keras.Model(model.input, outputs)

    def chunk(number: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        x, y, voxels = pixel_labelled(training(number), grid)
        targets = {"volume": y, "slices": slice_labels(voxels)}
        return x, {**targets, "pixels": voxels} if "pixels" in outputs else targets

    for layer in frozen:
        layer.trainable = False
    try:
        return train_stage(
            model,
            twin,
            losses,
            SlidingChunks(chunk, 1),
            validation,
            grid,
            run,
            name=name,
            modality="MR",
            architecture=architecture,
            base=base,
        )
    finally:
        for layer in frozen:
            layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)


def pixel_encoder(model: keras.Model) -> list[keras.Layer]:
    """The layers that ``model``'s per-pixel logits are computed from (and that layer itself)."""
    return keras.Model(model.input, model.get_layer(PIXEL_LOGITS_LAYER).output).layers[1:]
