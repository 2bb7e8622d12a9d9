"""The series, convert and models commands: what is under a path, and which models there are."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from napari_scan_classifier import outputs
from napari_scan_classifier.cli._shared import _print_skipped, _print_table
from napari_scan_classifier.errors import ScanClassifierError
from napari_scan_classifier.privacy import Redactor


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
            str(info.timepoints),  # a 4D series: classify --frame picks one
            info.description,
        )
        for info in series
    ]
    header = ("series key", "modality", "number", "voxels", "frames", "description")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(5)]
    _print_table(header, rows, widths)
    return 0


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
    _print_skipped(args, result.skipped)
    for number, volume in enumerate(result.volumes, start=1):
        path = save_nifti(volume, out / f"series_{number:03d}_{volume.modality}.nii.gz")
        for note in volume.metadata.get("geometry_warnings", []):
            print(f"{path.name}: {redact(str(note))}", file=sys.stderr)
        print(path)
    return 0
