"""How good is the demo CT model, measured on more phantoms than its model card's 100 per set?

The card's held-out sets (100 clear-lesion and 100 ``make_cases`` subtle-lesion phantoms) swing
the AUC by several hundredths from one draw to the next (version 8: 0.801 on the card's subtle
set, 0.864 on another 100). This measures a bundle on ``--cases`` fresh phantoms per set, from
seeds far from every seed the recipe trains, validates or tests on, and, with ``--base``,
compares two bundles on the very same phantoms (each on its own model grid): the paired,
stratified bootstrap of the AUC difference that fine-tuning's guardrail uses
(``training.guardrails.compare_with_base``), so a recipe change is judged by an interval, not by
one draw.

    python benchmarks/bench_demo_ct.py [--cases 400] [--model BUNDLE] [--base BUNDLE]

Without ``--model``: the shipped ``demo_ct_lesion``. Without ``--base``: each set's AUC and its
stratified bootstrap 95 % interval.
"""

from __future__ import annotations

import time

import numpy as np
import paired

from napari_scan_classifier.models import Bundle
from napari_scan_classifier.models.bundled import load_default_bundle
from napari_scan_classifier.models.demo.ct_phantoms import (
    PHANTOM_SHAPES,
    clear_cases,
    make_cases,
    on_grid,
)
from napari_scan_classifier.training.model import bundle_logits
from napari_scan_classifier.volume import Volume

# Far above every seed of the recipe (the stages on lesion masks below + 10 000 and from + 50 000,
# the scan-labels stage from + 40 000 x 4, validation + 10 000, the card's tests + 20 000 and
# + 30 000).
FRESH_SEEDS = {"clear": 2024 + 500_000, "subtle": 2024 + 600_000}


def main(argv: list[str] | None = None) -> int:
    n_cases, model, base = paired.setup(__doc__.split("\n\n")[0], 400, load_default_bundle, argv)
    started = time.perf_counter()
    sets = {
        "clear": clear_cases(n_cases, FRESH_SEEDS["clear"], PHANTOM_SHAPES),
        "subtle": make_cases(n_cases, FRESH_SEEDS["subtle"], PHANTOM_SHAPES),
    }
    for set_name, found in sets.items():
        cases = list(found)  # each bundle takes them on its own grid
        y, new = _probabilities(model, cases)
        reference = _probabilities(base, cases)[1] if base else None
        print(paired.line(f"{set_name:7s} n={len(y)}", y, new, reference, base))
    print(f"{time.perf_counter() - started:.0f} s")
    return 0


def _probabilities(bundle: Bundle, cases: list[tuple[Volume, str]]) -> tuple[np.ndarray, ...]:
    """The cases' labels and ``bundle``'s probabilities, on its model grid."""
    (split,) = on_grid(iter(cases), bundle.metadata.input_shape, "").splits.values()
    return split.y, bundle.metadata.probabilities(bundle_logits(bundle, split.x))


if __name__ == "__main__":
    raise SystemExit(main())
