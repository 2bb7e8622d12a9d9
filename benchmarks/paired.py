"""What the demo benchmarks share: a bundle's name, a macro AUC with its own interval, and two
bundles compared on the very same cases by fine-tuning's guardrail (the paired, stratified
bootstrap of ``training.guardrails.compare_with_base``)."""

from __future__ import annotations

import argparse
import platform
from collections.abc import Callable
from pathlib import Path

import numpy as np

from napari_scan_classifier.backend import device_name
from napari_scan_classifier.models import Bundle, load_bundle
from napari_scan_classifier.training.guardrails import compare_with_base, macro_auc


def setup(
    description: str, cases: int, shipped: Callable[[], Bundle], argv: list[str] | None
) -> tuple[int, Bundle, Bundle | None]:
    """The command line (``--cases``, ``--model``, ``--base``) read, the bundles loaded (the
    shipped one without ``--model``) and the machine and bundles printed."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cases", type=int, default=cases, help="phantoms per set")
    parser.add_argument("--model", type=Path, help="bundle folder (default: the shipped one)")
    parser.add_argument("--base", type=Path, help="a bundle to compare with, on the same cases")
    args = parser.parse_args(argv)
    model = load_bundle(args.model) if args.model else shipped()
    base = load_bundle(args.base) if args.base else None
    print(f"{platform.processor() or platform.machine()}, {device_name()}")
    print(f"model {name(model)}" + (f" against base {name(base)}" if base else ""))
    return args.cases, model, base


def name(bundle: Bundle) -> str:
    return f"{bundle.metadata.name} v{bundle.metadata.version}"


def own_interval(y: np.ndarray, probabilities: np.ndarray) -> str:
    """The AUC's stratified bootstrap 95 % interval: the guardrail's comparison against a
    constant score, whose AUC is 0.5 on every resample."""
    constant = np.full_like(probabilities, 0.5)
    low, high = compare_with_base(y, probabilities, constant, 0).ci95
    return f"(95 % interval {0.5 + low:.3f}-{0.5 + high:.3f})"


def line(
    label: str, y: np.ndarray, new: np.ndarray, reference: np.ndarray | None, base: Bundle | None
) -> str:
    """One set's figures: the AUC and its interval, or with a base, the paired comparison."""
    if base is None or reference is None:
        return f"{label}  AUC {macro_auc(y, new):.3f} {own_interval(y, new)}"
    comparison = compare_with_base(y, new, reference, base.metadata.version)
    low, high = comparison.ci95
    return (
        f"{label}  AUC {comparison.auc_base:.3f} (base) -> {comparison.auc_new:.3f}, "
        f"difference {comparison.difference:+.3f} (95 % interval {low:+.3f} to "
        f"{high:+.3f}): {comparison.verdict}"
    )
