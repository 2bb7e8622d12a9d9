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

from collections.abc import Iterable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from napari_scan_classifier.datasets import LabelledData
from napari_scan_classifier.models.bundle import Bundle
from napari_scan_classifier.models.demo.common import Grid
from napari_scan_classifier.models.demo.mask_stage import fit_epochs, fresh_model, stage_bundle
from napari_scan_classifier.phantoms import Phantom
from napari_scan_classifier.preprocess import prepare, resample_to_grid

ARCHITECTURE = "cnn3d_mil"
STAGE_NAME = "localise"
EVIDENCE_LAYER = "evidence"  # its first channel learns here to mark the cells with a lesion
LESION_CELL_WEIGHT = 30.0  # a (rare) cell with a lesion weighs as much as this many without


def cell_labelled(
    phantoms: Iterable[Phantom], grid: Grid, cells: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model-grid arrays (N, D, H, W), scan labels (N,) and cell labels (N, *cells, 1): 1 where
    at least one model voxel of the cell lies mostly inside a lesion."""
    arrays, labels, masks = [], [], []
    for phantom in phantoms:
        array, model_grid = prepare(phantom.volume, grid.input_shape, grid.spacing, grid.intensity)
        lesion = np.asarray(phantom.lesion_mask, dtype=np.float32)
        on_grid = resample_to_grid(lesion, model_grid, 0.0) > 0.5
        arrays.append(array)
        labels.append(grid.classes.index(phantom.class_name))
        masks.append(_cells(on_grid, cells))
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
    training: Iterable[Phantom],
    validation: LabelledData,
    grid: Grid,
    *,
    epochs: int,
    learning_rate: float,
    width: int,
    batch_size: int,
    seed: int,
    description: str,
    verbose: bool = True,
) -> Bundle:
    """A ``cnn3d_mil`` trained from scratch on ``training``'s scan and cell labels (see the
    module doc), as a version-1 bundle whose lineage holds this stage."""
    model = fresh_model(ARCHITECTURE, grid, width, seed)
    evidence = model.get_layer(EVIDENCE_LAYER).output
    twin = keras.Model(model.input, {"volume": model.output["volume"], "cells": evidence[..., :1]})
    twin.compile(
        keras.optimizers.Adam(learning_rate),
        {
            "volume": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            "cells": _cell_loss,
        },
    )
    cells_shape = tuple(int(n) for n in evidence.shape[1:4])
    x, y, cells = cell_labelled(training, grid, cells_shape)
    aucs = fit_epochs(
        twin,
        model,
        x,
        {"volume": y, "cells": cells},
        validation,
        epochs=epochs,
        batch_size=batch_size,
        name=STAGE_NAME,
        verbose=verbose,
    )
    return stage_bundle(
        model,
        grid,
        name=STAGE_NAME,
        modality="CT",
        architecture=ARCHITECTURE,
        description=description,
        aucs=aucs,
    )
