"""Command line: the same core as the napari plugin, for batch work on a headless machine.

Errors the user can act on are printed to stderr as one line each, with a non-zero exit and no
traceback; messages name files, never patients.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from napari_scan_classifier.errors import ScanClassifierError


def _series_command(args: argparse.Namespace) -> int:
    from napari_scan_classifier.io.dicom import list_series

    series = list_series(args.path)
    if args.json:
        print(json.dumps([dataclasses.asdict(info) for info in series], indent=2))
        return 0
    for info in series:
        shape = "x".join(str(n) for n in info.shape)
        print(f"{info.key}  {info.modality:<3} #{info.series_number!s:<5} {shape:<13} {info.description}")
    return 0


def _convert_command(args: argparse.Namespace) -> int:
    from napari_scan_classifier.io import load_scans
    from napari_scan_classifier.io.nifti import save_nifti

    result = load_scans(args.path)
    for skipped in result.skipped:
        print(f"skipped {skipped}", file=sys.stderr)
    out = Path(args.out)
    for number, volume in enumerate(result.volumes, start=1):
        path = save_nifti(volume, out / f"series_{number:03d}_{volume.modality}.nii.gz")
        for note in volume.metadata.get("geometry_warnings", []):
            print(f"{path.name}: {note}", file=sys.stderr)
        print(path)
    return 0


def _demo_command(args: argparse.Namespace) -> int:
    from napari_scan_classifier.plugin.demo import run_demo

    return run_demo(headless=args.headless)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-scan-classifier",
        description="Load, classify and fine-tune on CT/MRI scans without a viewer.",
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

    demo = commands.add_parser("demo", help="open napari with the sample scan")
    demo.add_argument("--headless", action="store_true", help="print the result, open no window")
    demo.set_defaults(run=_demo_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ScanClassifierError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
