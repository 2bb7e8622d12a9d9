"""The classify and demo commands: classification of scans, here or on a Dask cluster."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from napari_scan_classifier import outputs
from napari_scan_classifier.cli._shared import AUTO_HELP
from napari_scan_classifier.errors import ScanClassifierError


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
        frame=args.frame,
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
    counts = _counts(result.out_of_distribution, result.no_model, result.failed)
    resumed = f"; {result.resumed} from an earlier run" if result.resumed else ""
    print(f"wrote {result.out} ({classified} of {result.total} series classified{counts}{resumed})")
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
        frame=args.frame,
        on_row=_print_row,
        on_result=on_result,
        checkpoint=lambda partial: write_report(partial, out),
    )
    for skipped in report.skipped:
        print(f"skipped a file of input {skipped['input']}: {skipped['reason']}", file=sys.stderr)
    write_report(report, out)
    total = len(report.series)
    counts = _counts(report.out_of_distribution, report.no_model, total - report.classified)
    print(f"wrote {out} ({report.classified} of {total} series classified{counts})")
    return 0


def _counts(out_of_distribution: int, no_model: int, not_classified: int) -> str:
    """The summary's counts after "N of M series classified": the answered ones out of
    distribution, those no model covers, and the others that failed."""
    failed = not_classified - no_model
    return (
        f", {out_of_distribution} of them out of distribution" * bool(out_of_distribution)
        + f", {no_model} with no model for them" * bool(no_model)
        + f", {failed} failed (the reasons are in the results)" * bool(failed)
    )


def _print_row(row: dict[str, Any]) -> None:
    """One series as it is done: its lines on stdout, its problems on stderr."""
    from napari_scan_classifier.results import row_lines

    lines, warnings = row_lines(row)
    for line in lines:
        print(line, flush=True)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)


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
    classify.add_argument(
        "--frame",
        type=_passes,
        metavar="N",
        help="classify volume N (from 0) of each 4D series: a time point, echo or b-value "
        "(3D series as they are; default: 4D series are not classified)",
    )
    where = classify.add_mutually_exclusive_group()
    where.add_argument(
        "--workers", type=_passes, default=0, help="start a local Dask cluster of N processes"
    )
    where.add_argument("--scheduler", metavar="ADDRESS", help="use this Dask cluster")
    classify.set_defaults(run=_classify_command)
