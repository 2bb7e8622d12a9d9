"""Model-randomisation sanity check (Adebayo et al., 2018): a map that barely changes when the
model's weights are replaced by random ones explains the input, not the model.

:func:`randomised` re-draws every convolution, dense and recurrent weight from a normal
distribution with the trained array's mean and spread (seeded), and puts BatchNorm back to its
initial identity; :func:`randomisation_check` compares the trained and randomised maps by their
Spearman rank correlation over the model grid, which must stay below a bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from napari_scan_classifier.inference import prepare_input
from napari_scan_classifier.models import Bundle
from napari_scan_classifier.preprocess import inside_mask, resample_to_grid
from napari_scan_classifier.saliency.core import Target
from napari_scan_classifier.saliency.selection import saliency_map
from napari_scan_classifier.volume import Volume

RANK_CORRELATION_BOUND = 0.5
_BATCHNORM_STATE = ("gamma", "beta", "moving_mean", "moving_variance")


@dataclass(frozen=True)
class RandomisationCheck:
    """Spearman correlation of the trained model's map with the randomised model's.

    A constant map from the random model (NaN correlation) shares no ranking: it passes.
    """

    method: str
    rank_correlation: float
    bound: float = RANK_CORRELATION_BOUND

    @property
    def passed(self) -> bool:
        return not abs(self.rank_correlation) >= self.bound

    def to_dict(self) -> dict[str, Any]:
        rho = self.rank_correlation
        return {
            "method": self.method,
            "rank_correlation": None if np.isnan(rho) else rho,
            "bound": self.bound,
            "passed": self.passed,
        }


def randomised(bundle: Bundle, seed: int = 0) -> Bundle:
    """The same architecture and metadata with random weights (see the module docstring)."""
    model = bundle.model
    twin = model.__class__.from_config(model.get_config())
    rng = np.random.default_rng(seed)
    weights = []
    for variable, trained in zip(twin.weights, model.get_weights(), strict=True):
        if variable.path.rsplit("/", 1)[-1] in _BATCHNORM_STATE:
            weights.append(np.asarray(variable.numpy()))
        else:
            weights.append(rng.normal(trained.mean(), trained.std(), trained.shape))
    twin.set_weights([w.astype(np.float32) for w in weights])
    return Bundle(bundle.metadata, twin)


def randomisation_check(
    volume: Volume,
    bundle: Bundle,
    method: str | None = None,
    target_class: Target = None,
    *,
    layer: str | None = None,
    seed: int = 0,
    bound: float = RANK_CORRELATION_BOUND,
) -> RandomisationCheck:
    """Map ``volume`` with ``bundle`` and with its randomised twin (same method, layer and
    class) and compare their rankings over the model voxels inside the scan."""
    trained = saliency_map(volume, bundle, method, target_class, layer=layer)
    random = saliency_map(
        volume, randomised(bundle, seed), method, trained.target_class, layer=trained.layer
    )
    _, grid = prepare_input(volume, bundle)
    inside = inside_mask(grid)
    a, b = (resample_to_grid(m.values, grid, 0.0)[inside] for m in (trained, random))
    rho = float("nan") if np.ptp(a) == 0 or np.ptp(b) == 0 else stats.spearmanr(a, b)[0]
    return RandomisationCheck(trained.method, float(rho), bound)
