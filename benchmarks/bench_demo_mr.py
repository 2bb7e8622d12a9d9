"""How good is the demo brain MR model, measured on more phantoms than its model card's 150 per
set, and on each contrast apart?

The card's held-out sets (150 clear-lesion and 150 subtle-lesion phantoms, a third of each class)
leave the macro AUC uncertain by a few hundredths. This measures a bundle on ``--cases`` fresh
phantoms per set, from seeds far from every seed the recipe trains, validates or tests on: the
macro AUC with its stratified bootstrap 95 % interval, the ECE, and on the T1-like and the
FLAIR-like phantoms apart the macro AUC and each class's one-vs-rest AUC; then the ECE of both
sets together, the mix the calibration is fitted to. With ``--base``, it
compares two bundles on the very same phantoms by the paired bootstrap that fine-tuning's
guardrail uses, so a recipe change is judged by an interval, not by one draw.

    python benchmarks/bench_demo_mr.py [--cases 300] [--model BUNDLE] [--base BUNDLE]

Without ``--model``: the shipped ``demo_mr_brain``.
"""

from __future__ import annotations

import time

import numpy as np
import paired

from napari_scan_classifier.evaluation import ece_text, evaluate
from napari_scan_classifier.models import Bundle, load_bundle
from napari_scan_classifier.models.bundled import named_bundle_path
from napari_scan_classifier.models.demo import mr
from napari_scan_classifier.models.demo.common import on_grid
from napari_scan_classifier.phantoms import CLEAR, CONTRASTS, SUBTLE
from napari_scan_classifier.training.model import bundle_logits
from napari_scan_classifier.volume import Volume

# Far above every seed of the recipe (mask stages below + 10 000, the scan-label stage from
# + 40 000 x 3, validation + 10 000, the card's tests + 20 000 and + 30 000).
FRESH_SEEDS = {"clear": 2025 + 500_000, "subtle": 2025 + 600_000}
LESIONS = {"clear": CLEAR, "subtle": SUBTLE}


def main(argv: list[str] | None = None) -> int:
    n_cases, model, base = paired.setup(
        __doc__.split("\n\n")[0], 300, lambda: load_bundle(named_bundle_path(mr.DEMO_NAME)), argv
    )
    started = time.perf_counter()
    truths, predictions = [], []
    for set_name, lesions in LESIONS.items():
        cases = list(mr.unpaired_cases(n_cases, FRESH_SEEDS[set_name], (lesions,)))
        (split,) = on_grid(iter(cases), mr.GRID, set_name).splits.values()
        contrasts = np.array([_contrast(volume) for volume, _ in cases])
        new = _probabilities(model, split.x)
        reference = _probabilities(base, split.x) if base else None
        print(paired.line(f"{set_name:7s} n={len(split.y)}", split.y, new, reference, base))
        report = evaluate(split.y, new, mr.GRID.classes)
        print(
            f"{'':7s} ECE {ece_text(report)}, mean confidence {new.max(axis=1).mean():.3f}, "
            f"accuracy {report.accuracy:.3f}"
        )
        for contrast in CONTRASTS:
            print(f"{'':7s} {_by_class(split.y, new, contrasts == contrast, contrast)}")
        truths.append(split.y)
        predictions.append(new)
    both = evaluate(np.concatenate(truths), np.concatenate(predictions), mr.GRID.classes)
    print(f"both sets together (the validation's mix) n={both.n}: ECE {ece_text(both)}")
    print(f"{time.perf_counter() - started:.0f} s")
    return 0


def _contrast(volume: Volume) -> str:
    """The phantom's contrast, from the series description its generator writes."""
    words = volume.metadata["series_description"].split()
    return next(c for c in CONTRASTS if c in words)


def _by_class(y: np.ndarray, probabilities: np.ndarray, chosen: np.ndarray, label: str) -> str:
    """The chosen phantoms' macro AUC and each class's one-vs-rest AUC."""
    report = evaluate(y[chosen], probabilities[chosen], mr.GRID.classes).to_dict()
    per_class = ", ".join(f"{name} {r['auc']:.3f}" for name, r in report["per_class"].items())
    return f"{label} n={np.count_nonzero(chosen)}: macro AUC {report['auc']:.3f} ({per_class})"


def _probabilities(bundle: Bundle, x: np.ndarray) -> np.ndarray:
    return bundle.metadata.probabilities(bundle_logits(bundle, x))


if __name__ == "__main__":
    raise SystemExit(main())
