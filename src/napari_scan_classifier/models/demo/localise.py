"""A first training stage that tells the network *where* the lesions are: phantoms come with
their lesion masks, so each cell of the ``cnn3d_mil`` map gets its own label (does a lesion voxel
fall in it?) beside the scan's label, and the first channel of the network's per-cell
``evidence`` is trained as that cell's lesion logit.

Why: with the scan's label alone, a 5-10 mm lesion is a few voxels among 48^3, and the network
learns slowly, if at all, to find it (see :mod:`.ct`). With the cell labels, the maximum of that
channel over the map becomes the scan's lesion score, which the volume head learns to read. The
stages after this one fine-tune the network through the ordinary training pipeline on scan
labels alone, as a user's data would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
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
from napari_scan_classifier.preprocess import ModelGrid, prepare, resample_to_grid
from napari_scan_classifier.saliency.faithfulness import REGION_MM, Regions

ARCHITECTURE = "cnn3d_mil"
STAGE_NAME = "localise"
EVIDENCE_LAYER = "evidence"  # its first channel learns here to mark the cells with a lesion
LESION_CELL_WEIGHT = 30.0  # a (rare) cell with a lesion weighs as much as this many without
# Blurred copies: regions removed number N ** u of the N, u uniform up to this (about 1 in 8: all)
BLUR_EXPONENT = 1.15


def blurred(
    x: np.ndarray, grid: ModelGrid, lesion: np.ndarray, rng: np.random.Generator, *, keep: bool
) -> np.ndarray:
    """``x`` with regions removed as the faithfulness check removes them (its own fill): a
    log-uniform number of the regions without lesion, and every region touching ``lesion``
    unless ``keep``. Why: a network that reads blur itself as a lesion makes the check's
    fill remove nothing; blurred copies, half of them still with their lesion, teach that blur
    says nothing either way and that a removed lesion is gone."""
    regions = Regions(x, grid, REGION_MM, int(rng.integers(2**31)))
    touched = np.unique(regions.labels[lesion])
    others = np.setdiff1d(regions.candidates, touched)
    n = min(len(others), round(len(others) ** rng.uniform(0.0, BLUR_EXPONENT)))
    chosen = rng.choice(others, n, replace=False)
    return regions.removed(chosen if keep else np.union1d(chosen, touched))


def cell_labelled(
    phantoms: Iterable[Phantom], grid: Grid, cells: Sequence[int], blur_seed: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model-grid arrays (N, D, H, W), scan labels (N,) and cell labels (N, *cells, 1): 1 where
    at least one model voxel of the cell lies mostly inside a lesion. With ``blur_seed``, each
    phantom with a lesion is followed by a :func:`blurred` copy, in turn without its lesion
    (labelled normal, no lesion cell) and with it (its own labels)."""
    arrays, labels, masks = [], [], []
    rng = np.random.default_rng(blur_seed)
    copies = 0
    for phantom in phantoms:
        array, model_grid = prepare(phantom.volume, grid.input_shape, grid.spacing, grid.intensity)
        lesion = resample_to_grid(np.asarray(phantom.lesion_mask, np.float32), model_grid, 0.0)
        label = grid.classes.index(phantom.class_name)
        arrays.append(array)
        labels.append(label)
        masks.append(_cells(lesion > 0.5, cells))
        if blur_seed is not None and lesion.any():
            keep = copies % 2 == 1
            copies += 1
            arrays.append(blurred(array, model_grid, lesion > 0.05, rng, keep=keep))
            labels.append(label if keep else grid.classes.index("normal"))
            masks.append(masks[-1] if keep else np.zeros_like(masks[-1]))
    return np.stack(arrays), np.array(labels), np.stack(masks)[..., None]


def _cells(mask: np.ndarray, cells: Sequence[int]) -> np.ndarray:
    """Any-of pooling of a boolean (D, H, W) mask onto ``cells`` (each a divisor's worth)."""
    factors = [n // c for n, c in zip(mask.shape, cells, strict=True)]
    trimmed = mask[tuple(slice(0, c * f) for c, f in zip(cells, factors, strict=True))]
    shape = [v for c, f in zip(cells, factors, strict=True) for v in (c, f)]
    return trimmed.reshape(shape).max(axis=(1, 3, 5)).astype(np.float32)


def _cell_loss(target: Any, logit: Any) -> Any:
    """Binary cross-entropy of the cell logits, lesion cells weighted up."""
    loss = ops.maximum(logit, 0) - logit * target + ops.log1p(ops.exp(-ops.abs(logit)))
    return ops.mean(loss * (1.0 + (LESION_CELL_WEIGHT - 1.0) * target))


def train_localised(
    training: Callable[[int], Iterable[Phantom]],
    validation: LabelledData,
    grid: Grid,
    run: StageRun,
    *,
    blur: bool = False,
    window: int = 1,
    base: Bundle | None = None,
    name: str = STAGE_NAME,
) -> Bundle:
    """A ``cnn3d_mil`` trained on scan and cell labels (see the module doc) of the phantoms of
    chunks ``training(c)``, ``window`` of them an epoch (:class:`.SlidingChunks`), from scratch
    or from ``base``'s network, as a version-1 bundle whose lineage holds ``base``'s stages and
    this one."""
    model = fresh_model(ARCHITECTURE, grid, run.width, run.seed) if base is None else base.model
    evidence = model.get_layer(EVIDENCE_LAYER).output
    twin = keras.Model(model.input, {"volume": model.output["volume"], "cells": evidence[..., :1]})
    cells_shape = tuple(int(n) for n in evidence.shape[1:4])

    def chunk(number: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        blur_seed = run.seed + number if blur else None
        x, y, cells = cell_labelled(training(number), grid, cells_shape, blur_seed)
        return x, {"volume": y, "cells": cells}

    return train_stage(
        model,
        twin,
        {"cells": _cell_loss},
        SlidingChunks(chunk, window),
        validation,
        grid,
        run,
        name=name,
        modality="CT",
        architecture=ARCHITECTURE,
        base=base,
    )
