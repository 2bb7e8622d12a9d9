"""The train and evaluate commands, with progress and figures for a person."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from napari_scan_classifier import outputs
from napari_scan_classifier.cli._shared import CLASSES_HELP, DEMO, MODEL_HELP
from napari_scan_classifier.errors import ScanClassifierError

if TYPE_CHECKING:  # the heavy modules load only when a command needs them
    from napari_scan_classifier.evaluation import EvaluationReport
    from napari_scan_classifier.training import TrainingEvent, TrainingResult


def _train_command(args: argparse.Namespace) -> int:
    """Train or fine-tune; Ctrl-C cancels cleanly at the end of the current batch."""
    import signal
    import threading

    from napari_scan_classifier.results import resolve_bundle
    from napari_scan_classifier.training import TrainingConfig, train

    scratch_only = {
        "--architecture": args.architecture,
        "--input-shape": args.input_shape,
        "--modality": args.modality,
        "--width": args.width,
    }
    given = [flag for flag, value in scratch_only.items() if value is not None]
    if args.base and given:
        raise ScanClassifierError(
            f"{', '.join(given)} only apply when training from scratch; the base model fixes them"
        )
    settings = {
        "architecture": args.architecture,
        "input_shape": args.input_shape,
        "modality": args.modality,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "imbalance": args.imbalance,
        "augment": not args.no_augment,
        "seed": args.seed,
        "validation_fraction": args.validation_fraction,
        "patience": args.patience,
        "test_time_mirror": args.test_time_mirror,
        "name": args.name,
        "width": args.width,
        "label_names": tuple(args.classes) if args.classes else None,
        "target_sensitivity": args.target_sensitivity,
        "allow_new_classes": args.new_classes,
    }
    config = TrainingConfig(**{k: v for k, v in settings.items() if v is not None})
    if args.name is not None:
        outputs.check_name(args.name, "--name", MAX_MODEL_NAME_CHARS)
    base = resolve_bundle(args.base) if args.base else None
    name = args.name or (base.metadata.name if base else "scan-classifier")
    out = outputs.check_folder(args.out, len(f"{name}-v999999"), "--out")
    outputs.clean_stale(out)
    cancel = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: cancel.set())
    try:
        with TrainingProgress() as progress:
            result = train(args.cases, config, base=base, out=out, progress=progress, cancel=cancel)
    finally:
        signal.signal(signal.SIGINT, previous)
    _print_training_summary(result)
    return 0


MAX_MODEL_NAME_CHARS = 100  # the name is part of the saved folder's name


class TrainingProgress:
    """Training reports for a person: on a terminal, a bar with an ETA for loading the cases
    and one per epoch over its batches; otherwise (a log file, a pipe) plain lines: loading at
    every tenth of the cases, and each epoch's figures."""

    def __init__(self) -> None:
        self.terminal = sys.stderr.isatty()
        self._bar: Any = None
        self._stage = ""

    def __enter__(self) -> TrainingProgress:
        return self

    def __exit__(self, *_: object) -> None:
        self._close()

    def __call__(self, event: TrainingEvent) -> None:
        stage = "loading cases" if event.kind == "load" else f"epoch {event.epoch}/{event.epochs}"
        if event.kind == "epoch":
            self._close()
            print(event.message, flush=True)
            return
        if not self.terminal:
            if event.kind == "load" and _tenth(event.batch, event.total):
                print(event.message, flush=True)
            return
        if stage != self._stage:
            self._close()
            self._stage = stage
            self._bar = _bar(event.total, stage, "case" if event.kind == "load" else "batch")
        self._bar.update(event.batch - self._bar.n)
        if event.loss is not None:
            self._bar.set_postfix(loss=f"{event.loss:.4f}", refresh=False)

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._stage = None, ""


def _tenth(done: int, total: int) -> bool:
    """Whether ``done`` of ``total`` crosses a tenth (or is the last): plain-line progress."""
    return done == total or (10 * done) // total != (10 * (done - 1)) // total


def _bar(total: int, description: str, unit: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit=unit, file=sys.stderr, leave=False)


def _print_training_summary(result: TrainingResult) -> None:
    m = result.bundle.metadata
    counts = "; ".join(
        f"{split}: " + ", ".join(f"{name} {n}" for name, n in by_class.items())
        for split, by_class in result.class_counts.items()
    )
    print(f"cases per class: {counts}")
    print(f"saved {m.name} version {m.version} to {result.bundle.path}")
    print(f"validation: {_metrics_line(result.report)}")
    biases = m.class_bias or [0.0] * len(m.classes)
    bias = ", ".join(f"{name} {b:+.3f}" for name, b in zip(m.classes, biases, strict=True))
    print(
        f"calibration: ECE {result.uncalibrated.ece:.3f} -> {result.report.ece:.3f}, accuracy "
        f"{result.uncalibrated.accuracy:.3f} -> {result.report.accuracy:.3f} (temperature "
        f"{m.temperature:.3f}, class bias {bias})"
    )
    print(f"decision rule: {m.decision_rule.get('description', m.decision_rule['kind'])}")
    if result.base_report is not None:
        print(
            f"base model (version {m.parent_version}) on the same cases: "
            f"{_metrics_line(result.base_report)}"
        )
    if result.comparison is not None:
        print(f"verdict: {result.comparison.message}")
    for note in result.notes:
        print(f"note: {note}")
    for warning in result.warnings:
        print(f"warning: {warning}")


def _metrics_line(report: EvaluationReport) -> str:
    from napari_scan_classifier.evaluation import ece_text

    values = report.to_dict()
    shown = ("auc", "accuracy", "sensitivity", "specificity")
    labels = {"auc": report.auc_label.lower()}
    if len(report.class_names) > 2:  # macro means over the classes
        labels.update(sensitivity="macro sensitivity", specificity="macro specificity")
    parts = [
        f"{labels.get(key, key)} " + ("n/a" if values[key] is None else f"{values[key]:.3f}")
        for key in shown
    ]
    return f"n {values['n']}  " + "  ".join(parts) + f"  ece {ece_text(report)}"


def _evaluate_command(args: argparse.Namespace) -> int:
    from napari_scan_classifier.evaluation import confusion_lines, per_class_lines, save_figures
    from napari_scan_classifier.results import resolve_bundle
    from napari_scan_classifier.training import evaluate_bundle

    if args.figures:  # refused before the work, not after it
        outputs.check_folder(args.figures, len(".partial-reliability.png"), "--figures")
    report = evaluate_bundle(
        resolve_bundle(args.model), args.cases, split=args.split, class_names=args.classes
    )
    written = save_figures(report, None, args.figures) if args.figures else []
    if args.json:
        print(json.dumps(report.to_dict()))
        return 0
    print(_metrics_line(report))
    print("cases per class: " + ", ".join(f"{k} {v}" for k, v in report.class_counts.items()))
    print("each class against the rest:")
    print("\n".join(f"  {line}" for line in per_class_lines(report)))
    print("confusion matrix:")
    print("\n".join(f"  {line}" for line in confusion_lines(report)))
    for note in report.notes:
        print(f"note: {note}")
    if written:
        print(f"wrote {', '.join(path.name for path in written)} into the --figures folder")
    return 0


def _add_training_commands(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="train or fine-tune a model on labelled cases")
    train.add_argument("--cases", required=True, help="case library folder or MedMNIST-style npz")
    train.add_argument("--out", required=True, help="folder to save the new model version in")
    start = train.add_mutually_exclusive_group()
    start.add_argument(
        "--base", help=f"model bundle to fine-tune, or a shipped model's name ({DEMO})"
    )
    start.add_argument(
        "--architecture",
        choices=("cnn3d", "cnn3d_mil", "slice_gru", "slice_unet_gru"),
        help="train from scratch",
    )
    train.add_argument("--input-shape", type=int, nargs=3, metavar=("D", "H", "W"))
    train.add_argument("--modality", choices=("CT", "MR"))
    train.add_argument("--width", type=int, help="filters of the first layer (default 16)")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float, help="learning rate")
    train.add_argument("--imbalance", choices=("class_weight", "balanced_sampling", "none"))
    train.add_argument("--no-augment", action="store_true", help="train without augmentation")
    train.add_argument("--validation-fraction", type=float)
    train.add_argument("--patience", type=int, help="epochs without better validation AUC")
    train.add_argument("--seed", type=int)
    train.add_argument("--name", help="model name (default: the base's)")
    train.add_argument("--classes", nargs="+", metavar="NAME", help=CLASSES_HELP)
    train.add_argument(
        "--new-classes",
        action="store_true",
        help="fine-tuning: let the cases add classes the base model does not know",
    )
    train.add_argument(
        "--target-sensitivity",
        type=float,
        help="two classes: call the second at the threshold keeping this validation sensitivity",
    )
    train.add_argument(
        "--test-time-mirror",
        action=argparse.BooleanOptionalAction,
        help="answer with the mean of the scan's and its left-right mirror image's logits "
        "(default: as the base does; off from scratch)",
    )
    train.set_defaults(run=_train_command)

    evaluate = commands.add_parser("evaluate", help="measure a model on labelled cases")
    evaluate.add_argument("--model", required=True, help=MODEL_HELP)
    evaluate.add_argument("--cases", required=True, help="case library folder or MedMNIST npz")
    evaluate.add_argument("--split", help="npz split (default: test if present, else val)")
    evaluate.add_argument("--classes", nargs="+", metavar="NAME", help=CLASSES_HELP)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument(
        "--figures", metavar="FOLDER", help="save roc.png, confusion.png, reliability.png here"
    )
    evaluate.set_defaults(run=_evaluate_command)
