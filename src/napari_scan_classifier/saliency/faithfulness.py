"""Does the map show what the model uses? Region deletion and insertion with a plausible fill.

The model grid is cut into cubes of about ``region_mm`` (at least 2 voxels a side), ranked by
the map's mean over each. Only cubes where there is something to remove count: those where the
scan differs from its own blur (air, or fat clipped by a CT window, is left alone). Removing a
cube fills it from the scan around it, not with a constant: a Gaussian average of the voxels
*still present* (normalised convolution, so the removed content never leaks into its own fill),
plus noise of the scan's own level. A lesion removed this way becomes the organ around it, which
keeps the scan plausible for the network (in the spirit of ROAD, Rong et al. 2022); scattered
voxels set to a constant, as a voxel-level deletion curve does, are themselves out of
distribution, which is why such curves can make a random order look as good as the map.

Three orders give three curves of the target probability over the fraction of cubes removed:
most relevant first (**deletion**), least relevant first, and random (for reference). The
**insertion** curve starts from every cube filled and restores the most relevant first; with one
fill it is the least-relevant-first curve read backwards, so deletion and insertion together
hold both MoRF and LeRF. Both curves share their ends (the scan as it is, and every cube filled),
so the difference of their areas depends on the ranking alone.

**Rule**: the map passes when the insertion area exceeds the deletion area by at least
:data:`FAITHFUL_MARGIN` (0.1): averaged over the removal fractions, removing what the map calls
least important keeps p(class) at least 0.1 higher than removing what it calls most important.
A map no better than chance gives a gap near 0 (the two orders are then exchangeable), an
inverted one a negative gap; a model whose decision does not depend on any region (nothing to
remove changes it) cannot pass whatever its map, and the result says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from napari_scan_classifier.evaluation import softmax
from napari_scan_classifier.inference import logits_of, prepare_input
from napari_scan_classifier.models import Bundle
from napari_scan_classifier.preprocess import ModelGrid, inside_mask, resample_to_grid
from napari_scan_classifier.saliency.core import SaliencyMap, Target, class_index
from napari_scan_classifier.volume import Volume

FAITHFUL_MARGIN = 0.1  # insertion area minus deletion area needed to pass
REGION_MM = 12.0  # about one lesion radius
MIN_REGION_VOXELS = 2
STEPS = 10


@dataclass(frozen=True)
class Faithfulness:
    """Region deletion/insertion curves of one map (see the module docstring for the rule).

    ``fractions``: of the candidate regions removed (deletion, random) or restored (insertion);
    areas are over 0..1 (trapezoid rule).
    """

    target_class: str
    fractions: np.ndarray
    deletion: np.ndarray  # p(class) with the most relevant regions filled first
    insertion: np.ndarray  # p(class) from all filled, the most relevant restored first
    random: np.ndarray  # p(class) with regions filled in random order
    regions: int  # candidate regions
    region_voxels: tuple[int, int, int]
    margin: float = FAITHFUL_MARGIN

    @property
    def auc_deletion(self) -> float:
        return _area(self.fractions, self.deletion)

    @property
    def auc_insertion(self) -> float:
        return _area(self.fractions, self.insertion)

    @property
    def auc_random(self) -> float:
        return _area(self.fractions, self.random)

    @property
    def gap(self) -> float:
        """Insertion area minus deletion area: what the rule compares with the margin."""
        return self.auc_insertion - self.auc_deletion

    @property
    def passed(self) -> bool:
        return bool(self.gap >= self.margin)

    @property
    def reason(self) -> str:
        """The verdict in words, with its numbers."""
        cls = self.target_class
        figures = (
            f"insertion area {self.auc_insertion:.2f} vs deletion {self.auc_deletion:.2f}, "
            f"gap {self.gap:.2f}, needs {self.margin:.2f}; random order {self.auc_random:.2f}"
        )
        if self.passed:
            return f"removing the regions the map marks lowers p({cls}) first ({figures})"
        if abs(self.deletion[0] - self.deletion[-1]) < self.margin:
            return (
                f"p({cls}) hardly changes when every region is removed "
                f"({self.deletion[0]:.2f} -> {self.deletion[-1]:.2f}): no region carries this "
                f"decision, so no map can show one ({figures})"
            )
        return f"the map does not rank the regions p({cls}) depends on first ({figures})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "rule": f"insertion AUC - deletion AUC >= {self.margin:g}",
            "target_class": self.target_class,
            "auc_deletion": self.auc_deletion,
            "auc_insertion": self.auc_insertion,
            "auc_random": self.auc_random,
            "gap": self.gap,
            "reason": self.reason,
            "regions": self.regions,
            "region_voxels": list(self.region_voxels),
            "fractions": [float(f) for f in self.fractions],
            "deletion": [float(p) for p in self.deletion],
            "insertion": [float(p) for p in self.insertion],
            "random": [float(p) for p in self.random],
        }


def measure_faithfulness(
    volume: Volume,
    bundle: Bundle,
    saliency: SaliencyMap,
    target_class: Target = None,
    *,
    steps: int = STEPS,
    region_mm: float = REGION_MM,
    seed: int = 0,
    batch_size: int = 8,
) -> Faithfulness:
    """Deletion, insertion and random-order curves of ``saliency`` for ``target_class``
    (default: the map's own class), in ``steps`` equal fractions of the regions:
    ``3 * steps - 1`` forward passes on the region the map was made for (``saliency.box``)."""
    if saliency.values.shape != volume.shape:
        raise ValueError(
            f"the map {saliency.values.shape} is not on this scan's {volume.shape} grid"
        )
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    x, grid = prepare_input(volume, bundle, saliency.box)
    k = class_index(bundle, saliency.target_class if target_class is None else target_class)
    regions = _Regions(x, grid, region_mm, seed)
    model_map = resample_to_grid(saliency.values, grid, 0.0)
    rng = np.random.default_rng(seed)
    ranked = regions.ranked(model_map, rng)
    orders = {"deletion": ranked, "least": ranked[::-1], "random": rng.permutation(ranked)}
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = np.round(fractions * len(ranked)).astype(int)
    inputs = [ranked[:0], ranked] + [order[:n] for order in orders.values() for n in counts[1:-1]]
    probabilities = np.concatenate(
        [
            softmax(logits_of(bundle.model, batch), bundle.metadata.temperature)[:, k]
            for batch in _batches(regions, inputs, batch_size)
        ]
    )
    plain, empty, inner = probabilities[0], probabilities[1], probabilities[2:]
    curves = {
        name: np.concatenate([[plain], part, [empty]])
        for name, part in zip(orders, inner.reshape(3, steps - 1), strict=True)
    }
    return Faithfulness(
        target_class=bundle.metadata.classes[k],
        fractions=fractions,
        deletion=curves["deletion"],
        insertion=curves["least"][::-1].copy(),
        random=curves["random"],
        regions=len(ranked),
        region_voxels=regions.size,
    )


class _Regions:
    """Cubes of the model grid and the plausible fill of any set of them."""

    def __init__(self, x: np.ndarray, grid: ModelGrid, region_mm: float, seed: int) -> None:
        if not region_mm > 0:
            raise ValueError(f"region size must be positive, got {region_mm} mm")
        cube = np.round(region_mm / np.asarray(grid.spacing)).astype(int)
        self.size: tuple[int, int, int] = tuple(  # type: ignore[assignment]
            int(n) for n in np.clip(cube, MIN_REGION_VOXELS, grid.shape)
        )
        counts = -(-np.asarray(x.shape) // self.size)
        self.labels = np.ravel_multi_index(
            tuple(np.indices(x.shape) // np.reshape(self.size, (3, 1, 1, 1))), counts
        )
        self.x = x
        self.sigma = np.asarray(self.size, dtype=float)
        blurred = ndimage.gaussian_filter(x, self.sigma, mode="nearest")
        span = float(x.max() - x.min())
        content = (np.abs(x - blurred) > 1e-3 * span) & inside_mask(grid)
        self.candidates = np.unique(self.labels[content])
        self.mean = float(x[content].mean()) if content.any() else float(x.mean())
        fine = x - ndimage.gaussian_filter(x, 1.0, mode="nearest")
        level = 1.4826 * float(np.median(np.abs(fine[content]))) if content.any() else 0.0
        self.noise = np.random.default_rng(seed).normal(0.0, level, x.shape).astype(np.float32)
        self.low, self.high = float(x.min()), float(x.max())

    def ranked(self, model_map: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Candidate regions by mean map value, highest first; ties in random order."""
        sums = np.bincount(self.labels.ravel(), model_map.ravel(), self.labels.max() + 1)
        sizes = np.bincount(self.labels.ravel(), minlength=self.labels.max() + 1)
        shuffled = rng.permutation(self.candidates)
        means = sums[shuffled] / sizes[shuffled]
        return shuffled[np.argsort(-means, kind="stable")]

    def removed(self, chosen: np.ndarray) -> np.ndarray:
        """The input with the ``chosen`` regions filled from what remains around them."""
        gone = np.isin(self.labels, chosen)
        if not gone.any():
            return self.x
        kept = (~gone).astype(np.float32)
        weight = ndimage.gaussian_filter(kept, self.sigma, mode="nearest")
        total = ndimage.gaussian_filter(self.x * kept, self.sigma, mode="nearest")
        fill = np.where(weight > 1e-3, total / np.maximum(weight, 1e-3), self.mean)
        fill = np.clip(fill + self.noise, self.low, self.high)
        return np.where(gone, fill, self.x).astype(np.float32)


def _batches(regions: _Regions, inputs: list[np.ndarray], size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(inputs), size):
        yield np.stack([regions.removed(chosen) for chosen in inputs[start : start + size]])


def _area(fractions: np.ndarray, values: np.ndarray) -> float:
    return float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(fractions)))
