"""Train the bundled demo models, reproducibly: ``python -m napari_scan_classifier.models.train_demo
--out DIR`` writes ``DIR/demo_ct_lesion`` (:mod:`.demo.ct`); with ``--model demo_mr_brain``,
``DIR/demo_mr_brain`` (:mod:`.demo.mr`), and ``--compare`` measures its architecture and the
seed's ``slice_gru`` against ``cnn3d`` at small scale first.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from napari_scan_classifier.models.demo import mr
from napari_scan_classifier.models.demo.ct import (
    COARSE_INPUT_SHAPE,
    DEMO_NAME,
    FINE_GRID_EPOCHS,
    INPUT_SHAPE,
    LOCALISE_EPOCHS,
    SCAN_LABEL_EPOCHS,
    SMALL_LESION_EPOCHS,
    SUBTLE_LESION_EPOCHS,
    WIDTH,
    add_applicability,
    add_saliency_choice,
    build_demo,
    finalise,
)
from napari_scan_classifier.models.demo.ct_card import (
    sample_lesion_probability,
    sample_saliency_contrast,
)
from napari_scan_classifier.models.demo.ct_phantoms import (
    PHANTOM_SHAPES,
    SPACING,
    clear_cases,
    make_cases,
    on_grid,
    paired_cases,
)

__all__ = [
    "DEMO_NAME",
    "PHANTOM_SHAPES",
    "SPACING",
    "add_applicability",
    "add_saliency_choice",
    "build_demo",
    "clear_cases",
    "finalise",
    "main",
    "make_cases",
    "on_grid",
    "paired_cases",
    "sample_lesion_probability",
    "sample_saliency_contrast",
]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of the demo recipes; the defaults make the shipped models."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.model == mr.DEMO_NAME:
        return _main_mr(args)
    seed = 2024 if args.seed is None else args.seed
    if args.finalise:
        finalise(args.out, args.source, seed=seed)
        return 0
    build_demo(
        args.out,
        cases=_or(args.cases, 480),
        val_cases=args.val_cases,
        test_cases=_or(args.test_cases, 100),
        localise_epochs=_or(args.localise_epochs, LOCALISE_EPOCHS),
        small_epochs=_or(args.small_lesion_epochs, SMALL_LESION_EPOCHS),
        subtle_epochs=_or(args.subtle_lesion_epochs, SUBTLE_LESION_EPOCHS),
        fine_epochs=_or(args.fine_grid_epochs, FINE_GRID_EPOCHS),
        epochs=_or(args.epochs, SCAN_LABEL_EPOCHS),
        input_shape=tuple(args.input_shape),
        coarse_shape=tuple(args.coarse_input_shape),
        shapes=[tuple(s) for s in args.phantom_shape] if args.phantom_shape else PHANTOM_SHAPES,
        width=_or(args.width, WIDTH),
        batch_size=_or(args.batch_size, 8),
        seed=seed,
    )
    return 0


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def _main_mr(args: argparse.Namespace) -> int:
    seed = _or(args.seed, 2025)
    comparison = args.comparison
    if args.compare:
        comparison = mr.compare_architectures(
            args.out,
            cases=args.compare_cases,
            epochs=args.compare_epochs,
            test_cases=args.compare_test_cases,
            seed=seed,
        )
    mr.build_mr_demo(
        args.out,
        cases=_or(args.cases, 360),
        val_cases=args.val_cases,
        test_cases=_or(args.test_cases, 150),
        infarct_epochs=_or(args.infarct_epochs, mr.INFARCT_EPOCHS),
        slice_epochs=_or(args.slice_epochs, mr.SLICE_EPOCHS),
        subtle_slice_epochs=_or(args.subtle_slice_epochs, mr.SUBTLE_SLICE_EPOCHS),
        scan_epochs=_or(args.scan_epochs, mr.SCAN_EPOCHS),
        mixed_epochs=_or(args.epochs, mr.MIXED_EPOCHS),
        width=_or(args.width, 16),
        batch_size=_or(args.batch_size, mr.BATCH_SIZE),
        seed=seed,
        comparison=comparison,
    )
    return 0


# Each stage's epochs, one flag per stage; the defaults (in brackets) make the shipped models.
_STAGE_EPOCH_FLAGS = (
    ("--localise-epochs", f"CT stage on lesion masks [{LOCALISE_EPOCHS}]"),
    (
        "--small-lesion-epochs",
        f"CT stage on lesion masks, small lesions every other pair [{SMALL_LESION_EPOCHS}]",
    ),
    (
        "--subtle-lesion-epochs",
        f"CT stage on lesion masks, subtle lesions every other pair [{SUBTLE_LESION_EPOCHS}]",
    ),
    (
        "--fine-grid-epochs",
        f"CT stage on lesion masks on the final grid, every kind of lesion [{FINE_GRID_EPOCHS}]",
    ),
    (
        "--infarct-epochs",
        f"MR stage on lesion masks, slices through T1-like infarcts [{mr.INFARCT_EPOCHS}]",
    ),
    (
        "--slice-epochs",
        f"MR stage on lesion masks, slices through every lesion kind [{mr.SLICE_EPOCHS}]",
    ),
    (
        "--subtle-slice-epochs",
        "MR stage on lesion masks, slices through every lesion kind, subtle and clear "
        f"[{mr.SUBTLE_SLICE_EPOCHS}]",
    ),
    (
        "--scan-epochs",
        f"MR stage on lesion masks by slice, whole scans, slice encoder kept [{mr.SCAN_EPOCHS}]",
    ),
    ("--epochs", f"stage on scan labels: CT [{SCAN_LABEL_EPOCHS}], MR mixed [{mr.MIXED_EPOCHS}]"),
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write the model into")
    parser.add_argument(
        "--model",
        choices=(DEMO_NAME, mr.DEMO_NAME),
        default=DEMO_NAME,
        help="which demo model to make (default: %(default)s)",
    )
    parser.add_argument(
        "--finalise",
        action="store_true",
        help="CT: do not train; write the next version of --from with the applicability check",
    )
    parser.add_argument(
        "--from", dest="source", help="bundle folder to finalise (default: the shipped one)"
    )
    parser.add_argument("--cases", type=int, help="training phantoms per stage (CT 480, MR 360)")
    parser.add_argument("--val-cases", type=int, default=96, help="validation phantoms")
    parser.add_argument(
        "--test-cases", type=int, help="held-out phantoms per test set (CT 100, MR 150)"
    )
    for flag, stage in _STAGE_EPOCH_FLAGS:
        parser.add_argument(flag, type=int, help=f"epochs of the {stage}")
    parser.add_argument(
        "--input-shape",
        type=int,
        nargs=3,
        default=INPUT_SHAPE,
        help="CT: the model grid (default: %(default)s)",
    )
    parser.add_argument(
        "--coarse-input-shape",
        type=int,
        nargs=3,
        default=COARSE_INPUT_SHAPE,
        help="CT: the grid of the first three stages (default: %(default)s)",
    )
    parser.add_argument(
        "--phantom-shape",
        type=int,
        nargs=3,
        action="append",
        help="CT phantom grid (z y x), repeatable; default: 64 96 96 and 72 128 128",
    )
    parser.add_argument("--width", type=int, help=f"network width (CT {WIDTH}, MR 16)")
    parser.add_argument("--batch-size", type=int, help="CT 8, MR 4")
    parser.add_argument("--seed", type=int, help="CT 2024, MR 2025")
    parser.add_argument(
        "--compare",
        action="store_true",
        help=f"MR: compare slice_gru, {mr.ARCHITECTURE} and cnn3d first",
    )
    parser.add_argument("--comparison", help="MR: an earlier comparison's JSON for the card")
    parser.add_argument("--compare-cases", type=int, default=180)
    parser.add_argument("--compare-epochs", type=int, default=5)
    parser.add_argument("--compare-test-cases", type=int, default=60)
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
