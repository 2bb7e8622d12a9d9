"""Command line: the same core as the napari plugin, for batch work on a headless machine.

Errors the user can act on are printed to stderr as one line each, with a non-zero exit and no
traceback. Outputs are checked before the work starts. Nothing printed names an input file or
folder (folders are often named after patients): inputs are ``<input N>``, by their position on the
command line, and everything printed passes through :class:`~.privacy.Redactor`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_scan_classifier import outputs
from napari_scan_classifier._tensorflow_isolation import VERBOSE_VARIABLE, NativeLogFilter
from napari_scan_classifier.errors import ScanClassifierError
from napari_scan_classifier.privacy import RedactingStream, Redactor, numbered

if TYPE_CHECKING:  # the heavy modules load only when a command needs them
    from napari_scan_classifier.evaluation import EvaluationReport
    from napari_scan_classifier.training import TrainingEvent, TrainingResult


def _series_command(args: argparse.Namespace) -> int:
    from napari_scan_classifier.io.dicom import list_series
    from napari_scan_classifier.io.dicomweb import is_dicomweb_url, list_series_url

    series = list_series_url(args.path) if is_dicomweb_url(args.path) else list_series(args.path)
    if args.json:
        print(json.dumps([dataclasses.asdict(info) for info in series], indent=2))
        return 0
    rows = [
        (
            info.key,
            info.modality,
            f"#{info.series_number}",
            "x".join(str(n) for n in info.shape),
            info.description,
        )
        for info in series
    ]
    header = ("series key", "modality", "number", "voxels", "description")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(4)]
    _print_table(header, rows, widths)
    return 0


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]], widths: list[int]) -> None:
    """Columns padded to ``widths`` (the last one as it is), under a header row."""
    for row in [header, *rows]:
        padded = [f"{cell:<{width}}" for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*padded, row[-1]]))


def _models_command(args: argparse.Namespace) -> int:
    """The shipped models (usable by name) and the versions trained into the models folder."""
    from napari_scan_classifier.choice import model_region
    from napari_scan_classifier.models import load_bundle
    from napari_scan_classifier.models.bundled import bundled_names, named_bundle_path

    found = [(name, named_bundle_path(name)) for name in bundled_names()]
    folder = Path(args.folder) if args.folder else None
    if folder is not None and folder.is_dir():
        found += [(p.name, p) for p in sorted(folder.iterdir()) if (p / "bundle.json").is_file()]
    if not found:
        print("no models installed")
        return 0
    header = ("name", "version", "modality", "region", "grid", "classes")
    rows = []
    for name, path in found:
        try:
            m = load_bundle(path).metadata
        except ScanClassifierError as error:
            rows.append((name, "-", "-", "-", "-", f"unusable: {error}"))
            continue
        grid = "x".join(str(n) for n in m.input_shape)
        region = model_region(m) or "-"
        rows.append((name, str(m.version), m.modality, region, grid, ", ".join(m.classes)))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(5)]
    _print_table(header, rows, widths)
    return 0


def _convert_command(args: argparse.Namespace) -> int:
    from napari_scan_classifier.io import load_scans
    from napari_scan_classifier.io.nifti import save_nifti

    out = outputs.check_folder(args.out, len("series_000_XXXXXXXX.nii.gz"), "--out")
    outputs.clean_stale(out)
    redact = Redactor([args.path])
    result = load_scans(args.path)
    for skipped in result.skipped:
        redact.found(skipped.local_path(), args.path)
        print(f"skipped a file of input 1: {redact(str(skipped))}", file=sys.stderr)
        _tell_path(args, f"file {skipped.position} of input 1 is {skipped.local_path()}")
    for number, volume in enumerate(result.volumes, start=1):
        path = save_nifti(volume, out / f"series_{number:03d}_{volume.modality}.nii.gz")
        for note in volume.metadata.get("geometry_warnings", []):
            print(f"{path.name}: {redact(str(note))}", file=sys.stderr)
        print(path)
    return 0


def _classify_command(args: argparse.Namespace) -> int:
    from napari_scan_classifier.io.dicomweb import is_dicomweb_url
    from napari_scan_classifier.results import check_output

    check_output(args.out)
    if args.saliency_dir:
        outputs.check_folder(
            args.saliency_dir, len("000_XX_integrated_gradients_.nii.gz") + 64, "--saliency-dir"
        )
    if args.store_results or any(is_dicomweb_url(p) for p in args.paths):
        if args.workers or args.scheduler:
            raise ScanClassifierError(
                "DICOMweb addresses are classified in this process: leave out --workers and "
                "--scheduler"
            )
        return _classify_here(args)
    return _classify_cohort(args)


def _classify_cohort(args: argparse.Namespace) -> int:
    """Local files and folders: series by series, resumable, here or on a Dask cluster."""
    from napari_scan_classifier.cohort import Options, classify_cohort

    explain = bool(args.saliency_dir or args.faithfulness or args.saliency_class)
    options = Options(
        saliency=(args.method or "default") if explain else "none",
        passes=args.passes,
        faithfulness=args.faithfulness,
        saliency_dir=args.saliency_dir,
        saliency_class=args.saliency_class,
    )
    try:
        result = classify_cohort(
            args.paths,
            args.model,
            args.out,
            options=options,
            workers=args.workers,
            scheduler=args.scheduler,
        )
    except KeyboardInterrupt:
        print("interrupted: run the same command again to go on from here", file=sys.stderr)
        return 130
    classified = result.total - result.failed
    resumed = f"; {result.resumed} from an earlier run" if result.resumed else ""
    outside = f", {result.out_of_distribution} out of distribution" * bool(
        result.out_of_distribution
    )
    outside += f", {result.no_model} with no model for them" * bool(result.no_model)
    print(
        f"wrote {result.out} ({classified} of {result.total} series classified{outside}{resumed})"
    )
    if not classified:
        raise ScanClassifierError("no scan could be classified (the reasons are in the results)")
    return 0


def _classify_here(args: argparse.Namespace) -> int:
    from napari_scan_classifier.results import check_output, classify_paths, write_report

    out = check_output(args.out)
    explain = bool(
        args.saliency_dir or args.faithfulness or args.store_results or args.saliency_class
    )
    paths, model, on_result = args.paths, args.model, None
    if args.store_results:
        from napari_scan_classifier.dicom_results import store_results_hook

        paths, model, on_result = store_results_hook(args.paths, args.model)
    report = classify_paths(
        paths,
        model,
        saliency=(args.method or "default") if explain else "none",
        passes=args.passes,
        faithfulness=args.faithfulness,
        saliency_dir=args.saliency_dir,
        saliency_class=args.saliency_class,
        on_row=_print_row,
        on_result=on_result,
        checkpoint=lambda partial: write_report(partial, out),
    )
    for skipped in report.skipped:
        print(f"skipped a file of input {skipped['input']}: {skipped['reason']}", file=sys.stderr)
    write_report(report, out)
    outside = f", {report.out_of_distribution} out of distribution" * bool(
        report.out_of_distribution
    )
    outside += f", {report.no_model} with no model for them" * bool(report.no_model)
    print(f"wrote {out} ({report.classified} of {len(report.series)} series classified{outside})")
    return 0


def _print_row(row: dict[str, Any]) -> None:
    """One line per series on stdout as it is done; its problems on stderr."""
    outcome = row.get("predicted_class") or "not classified"
    if row["status"] == "out_of_distribution":
        outcome = f"out of distribution (the model would say {outcome})"
    choice = row.get("model_choice")
    if choice and row["status"] != "no_model":  # without a model, the error says why
        print(f"{row['series']}: {choice['reason']} ({choice['how']})", flush=True)
    print(f"{row['series']}: {outcome}", flush=True)
    reasons = (row.get("ood") or {}).get("reasons", [])
    modality = None if reasons else row.get("modality_warning")  # the reasons say it too
    notes = [row["error"], modality, *reasons, *row["geometry_warnings"]]
    for note in filter(None, notes):
        print(f"warning: {row['series']}: {note}", file=sys.stderr)


def _demo_command(args: argparse.Namespace) -> int:
    if args.headless:
        return _print_demo_result(args.model)
    from napari_scan_classifier.plugin.demo import run_demo

    return run_demo(model=args.model)


def _print_demo_result(model: str | None) -> int:
    """Classify the sample CT as the demo window does, and print what the window would show."""
    from napari_scan_classifier.choice import Chooser, is_auto
    from napari_scan_classifier.io import load_scans
    from napari_scan_classifier.results import classify_scan, resolve_bundle, summary_lines
    from napari_scan_classifier.samples import sample_ct_path

    volumes = load_scans(sample_ct_path()).volumes
    for volume in volumes:
        spacing = " x ".join(f"{mm:g}" for mm in volume.spacing)
        print(f"{volume.display_name()}: {volume.shape} voxels, {spacing} mm", flush=True)
    chooser = Chooser() if is_auto(model) else None
    given = None if chooser else resolve_bundle(model)
    for volume in volumes:
        choice = chooser.choose(volume) if chooser else None
        bundle = chooser.bundle(choice.require()) if chooser and choice else given
        result = classify_scan(volume, bundle, faithfulness=True).to_dict()
        if choice is not None:
            result["model_choice"] = choice.to_dict()
        print("\n".join(f"  {line}" for line in summary_lines(result)), flush=True)
    return 0


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
    values = report.to_dict()
    shown = ("auc", "accuracy", "sensitivity", "specificity", "ece")
    labels = {"auc": report.auc_label.lower()}
    if len(report.class_names) > 2:  # macro means over the classes
        labels.update(sensitivity="macro sensitivity", specificity="macro specificity")
    parts = [
        f"{labels.get(key, key)} " + ("n/a" if values[key] is None else f"{values[key]:.3f}")
        for key in shown
    ]
    return f"n {values['n']}  " + "  ".join(parts)


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


DEMO = "demo_ct_lesion"
MODEL_HELP = f"model bundle folder or .zip, or a shipped model's name ({DEMO})"
AUTO_HELP = (
    "model bundle folder or .zip, a shipped model's name, or 'auto': for each scan, the shipped "
    "or installed model made for its modality and body region (printed with the reason)"
)
CLASSES_HELP = (
    "names of an npz file's label indices 0, 1, ... in order (a file's own class_names win)"
)


def _add_training_commands(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="train or fine-tune a model on labelled cases")
    train.add_argument("--cases", required=True, help="case library folder or MedMNIST-style npz")
    train.add_argument("--out", required=True, help="folder to save the new model version in")
    start = train.add_mutually_exclusive_group()
    start.add_argument(
        "--base", help=f"model bundle to fine-tune, or a shipped model's name ({DEMO})"
    )
    start.add_argument("--architecture", choices=("cnn3d", "slice_gru"), help="train from scratch")
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


def _passes(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number (0 or more), got {text!r}")
    return int(text)


CLASSIFY_HELP = """\
Classify every series under the paths; write one row per series.

Local files and folders: each row is appended to a journal beside --out (results.jsonl for
results.json or .csv) as soon as its series is done, and --out is written from it at the end.
Running the same command again resumes: series already in the journal (by series key) are
skipped, so an interrupted cohort finishes without duplicates. Delete the journal to start over.
@list.txt stands for the paths listed in that file, one per line. --workers N classifies on a
local Dask cluster of N processes, --scheduler ADDRESS on an existing one; the default is this
process. DICOMweb addresses are classified in this process, without a journal."""


def _add_classify_command(commands: argparse._SubParsersAction) -> None:
    classify = commands.add_parser(
        "classify",
        help="classify every series under the paths into a JSON or CSV file",
        description=CLASSIFY_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    classify.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="DICOM folder/file, NIfTI, @list.txt or DICOMweb address",
    )
    classify.add_argument("--out", required=True, help="results file: .json or .csv")
    classify.add_argument("--model", default="auto", help=AUTO_HELP)
    classify.add_argument("--saliency-dir", help="write a saliency map per series here (NIfTI)")
    classify.add_argument(
        "--method",
        choices=("gradcam", "integrated_gradients", "occlusion"),
        help="saliency method (default: the model's own, else integrated_gradients)",
    )
    classify.add_argument(
        "--saliency-class",
        metavar="CLASS",
        help="explain this class of the model in every series (default: each one's prediction)",
    )
    classify.add_argument(
        "--faithfulness",
        action="store_true",
        help="check each saliency map (region deletion and insertion; adds a pass/fail)",
    )
    classify.add_argument(
        "--passes", type=_passes, default=10, help="MC-dropout passes for the uncertainty (0: none)"
    )
    classify.add_argument(
        "--store-results",
        action="store_true",
        help="send a DICOM SR and the saliency map back to the DICOMweb server of each address",
    )
    where = classify.add_mutually_exclusive_group()
    where.add_argument(
        "--workers", type=_passes, default=0, help="start a local Dask cluster of N processes"
    )
    where.add_argument("--scheduler", metavar="ADDRESS", help="use this Dask cluster")
    classify.set_defaults(run=_classify_command)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default where it has a value worth showing (not None or off)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


class _Parsers(argparse._SubParsersAction):
    """Every command's parser shows defaults (the formatter is not inherited otherwise)."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        kwargs["formatter_class"] = HelpFormatter
        return super().add_parser(name, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-scan-classifier",
        description="Load, classify and fine-tune on CT/MRI scans without a viewer.",
        formatter_class=HelpFormatter,
    )
    parser.register("action", "parsers", _Parsers)
    parser.add_argument(
        "--verbose", action="store_true", help="let TensorFlow log (device probing, oneDNN, CUDA)"
    )
    parser.add_argument(
        "--show-paths",
        action="store_true",
        help="on your own machine: say on stderr where each input and skipped file is (results "
        "files never hold paths)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    series = commands.add_parser("series", help="list the DICOM series under a path (no decoding)")
    series.add_argument("path")
    series.add_argument("--json", action="store_true", help="print JSON instead of a table")
    series.set_defaults(run=_series_command)

    convert = commands.add_parser("convert", help="write every series under a path as NIfTI")
    convert.add_argument("path")
    convert.add_argument("--out", required=True, help="output folder")
    convert.set_defaults(run=_convert_command)

    models = commands.add_parser("models", help="list the installed models: versions, classes")
    models.add_argument(
        "--folder", default=str(default_models_folder()), help="trained models folder to list too"
    )
    models.set_defaults(run=_models_command)

    _add_classify_command(commands)
    demo = commands.add_parser("demo", help="open napari with the sample scan, classified")
    demo.add_argument("--headless", action="store_true", help="print the result, open no window")
    demo.add_argument("--model", default="auto", help=AUTO_HELP)
    demo.set_defaults(run=_demo_command)

    _add_training_commands(commands)
    return parser


def default_models_folder() -> Path:
    """Where the Train dock saves new model versions unless told otherwise, and where ``--model
    auto`` finds the installed models (``$NAPARI_SCAN_CLASSIFIER_MODELS`` overrides it)."""
    return outputs.models_folder()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        _let_tensorflow_log()
        return _run(args)
    with NativeLogFilter():
        return _run(args)


def _let_tensorflow_log() -> None:
    """Undo the quiet defaults before TensorFlow loads (it loads when a command needs it)."""
    import logging

    os.environ[VERBOSE_VARIABLE] = "1"
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    for name in ("tensorflow", "absl"):
        logging.getLogger(name).setLevel(logging.INFO)


def _run(args: argparse.Namespace) -> int:
    chosen = ("out", "saliency_dir", "model", "base")
    inputs = _inputs(args)
    redact = Redactor(inputs, keep=[getattr(args, a) for a in chosen if getattr(args, a, None)])
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RedactingStream(stdout, redact), RedactingStream(stderr, redact)
    args.local_stderr = stderr if args.show_paths else None
    for number, given in enumerate(inputs, start=1):
        _tell_path(args, f"input {number} is {given if '://' in given else os.path.abspath(given)}")
    try:
        return int(args.run(args))
    except ScanClassifierError as error:
        text = numbered(str(error), 1) if len(inputs) == 1 else str(error)
        print(f"error: {text}", file=sys.stderr)
        return 2
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = stdout, stderr


def _tell_path(args: argparse.Namespace, line: str) -> None:
    """With ``--show-paths`` only: a line with a local path, on stderr past the redaction (the
    user asked, on their own machine); never in stdout or a results file."""
    if args.local_stderr is not None:
        sys.stderr.flush()
        print(line, file=args.local_stderr, flush=True)


def _inputs(args: argparse.Namespace) -> list[str]:
    """The command's inputs in the order they are numbered in messages (``<input N>``)."""
    if getattr(args, "paths", None):
        return list(args.paths)
    given = [getattr(args, "path", None), getattr(args, "cases", None)]
    return [p for p in given if p]


if __name__ == "__main__":
    sys.exit(main())
