"""The MR demo's first stages: ``slice_unet_gru``'s slice encoder learns what each lesion looks
like, pixel by pixel, from balanced slices: every slice through a lesion, beside the same slice
of another normal head of the same contrast, shuffled and packed into pseudo-scans of the model
grid's depth. Only the encoder's outputs are trained here (each pixel's class, and each slice's
highest pixel logit per class against the slice's label); the GRU across slices learns whole
scans in the stage after, from this encoder.

Why balanced slices: trained on whole scans, where most slices and voxels hold no lesion, the
per-pixel encoder learnt where T1-like infarcts lie but not what they look like (the highest
infarct logit of a head told infarct heads from normal ones with AUC 0.52-0.54). Why T1-like
infarcts first, alone (:data:`T1_INFARCTS`), then every kind (:data:`PAIR_KINDS`): on balanced
slices of every kind from the start, half of them T1-like infarcts, 22 epochs of 360 pairs (and
14 more, its training loss still falling) left the head's highest infarct logit at AUC
0.50-0.55 on T1-like heads from other seeds, while on T1-like infarct slices alone the encoder
learns them within 13-16 epochs of 170-180 pairs (0.91). Every kind after that keeps part of it:
in the shipped run, 10 epochs at 1e-3 left T1-like infarcts at 0.66 and taught T1-like tumours
0.73 and FLAIR-like lesions 0.96-1.00 (in a pilot from another first stage: 0.75, 0.79 and
0.91-0.93; at 3e-4 the infarcts went the same way and the rest came slower). Then every kind
subtle and clear in turn (:data:`SUBTLE_PAIR_KINDS`) teaches the subtle lesions and brings clear
T1-like infarcts back to 0.75 (figures in :mod:`.mr`). The GRU across slices, trained next on
whole scans, makes more of these maps than their maximum: version 8 tells clear T1-like infarcts
apart with one-vs-rest AUC 0.985 (300 fresh phantoms).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

import keras
import numpy as np

from napari_scan_classifier.datasets import LabelledData
from napari_scan_classifier.models.architectures import PIXEL_LOGITS_LAYER, PIXEL_PEAK_LAYER
from napari_scan_classifier.models.bundle import Bundle
from napari_scan_classifier.models.demo.common import Grid
from napari_scan_classifier.models.demo.mask_stage import StageRun, fresh_model, train_stage
from napari_scan_classifier.models.demo.slices import (
    LESION_PIXEL_WEIGHT,
    LESION_SLICE_WEIGHT,
    pixel_labelled,
    slice_labels,
    weighted_loss,
)
from napari_scan_classifier.phantoms import CLEAR, SUBTLE, Lesions, Phantom, make_brain_mr_phantom

ARCHITECTURE = "slice_unet_gru"
Kind = tuple[str, str, Lesions]  # a lesion class, a contrast and the lesion's ranges
T1_INFARCTS: tuple[Kind, ...] = (("infarct", "T1", CLEAR),)
# Each pair's lesion class and contrast, in turn: the hardest kinds most often.
PAIR_KINDS: tuple[Kind, ...] = (
    ("infarct", "T1", CLEAR),
    ("tumour", "T1", CLEAR),
    ("infarct", "T1", CLEAR),
    ("infarct", "FLAIR", CLEAR),
    ("infarct", "T1", CLEAR),
    ("tumour", "T1", CLEAR),
    ("infarct", "T1", CLEAR),
    ("tumour", "FLAIR", CLEAR),
)
# Every kind subtle, then clear, so that learning the subtle ones keeps the clear ones.
SUBTLE_PAIR_KINDS: tuple[Kind, ...] = tuple(
    (name, contrast, lesions)
    for lesions in (SUBTLE, CLEAR)
    for contrast in ("T1", "FLAIR")
    for name in ("infarct", "tumour")
)


def lesion_pairs(
    pairs: int, seed: int, kinds: Sequence[Kind] = PAIR_KINDS
) -> Iterator[tuple[Phantom, Phantom]]:
    """``pairs`` (lesion, normal) phantom pairs of one contrast, ``kinds`` in turn; lesion
    heads from ``seed``, normal heads from ``seed + pairs``."""
    for index in range(pairs):
        name, contrast, lesions = kinds[index % len(kinds)]
        lesioned = make_brain_mr_phantom(seed + index, name, lesions=lesions, contrast=contrast)
        normal = make_brain_mr_phantom(seed + pairs + index, "normal", contrast=contrast)
        yield lesioned, normal


@dataclass(frozen=True)
class LesionSlices:
    """Model-grid slices (N, H, W) through lesions and the same slices of normal heads, with
    their voxel labels (N, H, W)."""

    images: np.ndarray
    labels: np.ndarray

    @classmethod
    def of(cls, pairs: Iterable[tuple[Phantom, Phantom]], grid: Grid) -> LesionSlices:
        images, labels = [], []
        for pair in pairs:
            arrays, _, voxels = pixel_labelled(pair, grid)
            through = np.flatnonzero(voxels[0].any(axis=(1, 2)))
            images += [arrays[0, through], arrays[1, through]]
            labels += [voxels[0, through], voxels[1, through]]
        return cls(np.concatenate(images), np.concatenate(labels))

    def packed(self, depth: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The slices shuffled (by ``seed``) into pseudo-scans ``depth`` slices deep, with the
        encoder's targets; the last incomplete pseudo-scan is left out."""
        order = np.random.default_rng(seed).permutation(len(self.images))
        order = order[: len(order) // depth * depth]
        shape = (-1, depth, *self.images.shape[1:])
        voxels = self.labels[order].reshape(shape)
        x = self.images[order].reshape(shape)
        return x, {"pixels": voxels, "peaks": slice_labels(voxels)}


def train_lesion_slices(
    data: LesionSlices,
    validation: LabelledData,
    grid: Grid,
    run: StageRun,
    *,
    name: str,
    base: Bundle | None = None,
) -> Bundle:
    """A ``slice_unet_gru`` (fresh, or ``base``'s) whose encoder is trained on ``data`` (see
    the module doc); its validation AUC is that of each scan's highest pixel logit per class,
    since the scan logits are not trained yet."""
    model = fresh_model(ARCHITECTURE, grid, run.width, run.seed) if base is None else base.model
    pixels = model.get_layer(PIXEL_LOGITS_LAYER).output
    peaks = model.get_layer(PIXEL_PEAK_LAYER).output
    encoder = keras.Model(model.input, {"pixels": pixels, "peaks": peaks})
    losses = {
        "pixels": weighted_loss(LESION_PIXEL_WEIGHT),
        "peaks": weighted_loss(LESION_SLICE_WEIGHT),
    }
    scan_peaks = keras.Model(model.input, keras.layers.GlobalMaxPooling1D(name="scan_peak")(peaks))
    return train_stage(
        model,
        encoder,
        losses,
        lambda epoch: data.packed(grid.input_shape[0], run.seed + epoch),
        validation,
        grid,
        replace(run, batch_size=1),  # one pseudo-scan of slices a step
        name=name,
        modality="MR",
        architecture=ARCHITECTURE,
        base=base,
        scored=scan_peaks,
    )
