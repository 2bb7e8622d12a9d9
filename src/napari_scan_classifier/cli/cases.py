"""The cases command: the case library from a terminal, as the Annotate dock keeps it (add a
labelled scan with its mask, list, relabel, delete and restore, export and import a zip)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from napari_scan_classifier.cases import CaseLibrary, CaseRecord, default_root
from napari_scan_classifier.cli._shared import _print_skipped, _print_table
from napari_scan_classifier.errors import InvalidInputError, ScanClassifierError
from napari_scan_classifier.privacy import THE_INPUT, renamed
from napari_scan_classifier.volume import Volume

RESTORE_HINT = "cases restore ID brings it back"


def _add_cases_command(commands: argparse._SubParsersAction) -> None:
    cases = commands.add_parser(
        "cases", help="the case library: add a labelled scan, list, relabel, delete, export"
    )
    actions = cases.add_subparsers(dest="action", required=True)
    for name, help_text, arguments, run in _ACTIONS:
        action = actions.add_parser(name, help=help_text)
        arguments(action)
        action.add_argument(
            "--library", default=str(default_root()), help="case library folder (the docks' own)"
        )
        action.set_defaults(run=run)


def _list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trash", action="store_true", help="list the deleted cases instead")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="the scan: NIfTI, DICOM file or folder")
    parser.add_argument("--label", required=True, help="the case's class, e.g. lesion")
    parser.add_argument("--mask", help="lesion mask (NIfTI) on the scan's own voxel grid")
    parser.add_argument("--series", help="which series of a folder (its key in the series command)")
    parser.add_argument("--frame", type=int, help="volume of a 4D series, from 0")


def _relabel_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("case_id")
    parser.add_argument("label", help="the new class")


def _ids_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("case_ids", nargs="+", metavar="case_id")


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("zip", help="the zip to write")
    parser.add_argument("--ids", nargs="+", metavar="case_id", help="only these cases")


def _import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="a zip written by cases export or the Annotate dock")


def _list(args: argparse.Namespace) -> int:
    library = CaseLibrary(args.library)
    records = library.list_trash() if args.trash else library.list()
    if args.json:
        print(json.dumps([_record_json(record) for record in records], indent=2))
        return 0
    header = ("case id", "label", "modality", "voxels", "spacing (mm)", "mask", "created")
    rows = [_row(record) for record in records]
    _print_table(header, rows, [max(len(r[i]) for r in [header, *rows]) for i in range(6)])
    counts: dict[str, int] = {}
    for record in records:
        counts[record.label] = counts.get(record.label, 0) + 1
    where = " in the trash" if args.trash else ""
    listing = ", ".join(f"{label} {n}" for label, n in sorted(counts.items()))
    print(f"{_count(len(records))}{where}" + (f": {listing}" if records else ""))
    for damaged in [] if args.trash else library.corrupt_cases():
        print(f"damaged case {damaged.case_id}: {damaged.reason}", file=sys.stderr)
    return 0


def _count(number: int) -> str:
    from napari_scan_classifier.datasets import n_cases  # imports TensorFlow: not for --help

    return n_cases(number)


def _record_json(record: CaseRecord) -> dict[str, Any]:
    data = record.to_json()
    data.pop("format_version")
    return data


def _row(record: CaseRecord) -> tuple[str, ...]:
    return (
        record.case_id,
        record.label,
        record.modality,
        "x".join(str(n) for n in record.shape),
        " x ".join(f"{s:g}" for s in record.spacing),
        "yes" if record.has_mask else "no",
        record.created,
    )


def _add(args: argparse.Namespace) -> int:
    from napari_scan_classifier.io import load_scans

    loaded = load_scans(args.path)
    _print_skipped(args, loaded.skipped)
    volume = _one_volume(loaded.volumes, args.series, args.frame)
    mask = _mask(args.mask) if args.mask else None
    record = CaseLibrary(args.library).add(volume, args.label, mask=mask)
    masked = ", with its mask" if record.has_mask else ""
    print(f"added case {record.case_id}: {record.label}, {_row(record)[3]} voxels{masked}")
    return 0


def _one_volume(volumes: list[Volume], series: str | None, frame: int | None) -> Volume:
    """The scan a case is made of: the one series of the input (or ``series``), and of a 4D
    series the volume ``frame``."""
    if series is not None:
        volumes = [v for v in volumes if v.metadata.get("series_key") == series]
        if not volumes:
            raise InvalidInputError(
                f"{THE_INPUT} holds no series {series} (the series command lists its keys)"
            )
    if not volumes:
        raise InvalidInputError(f"{THE_INPUT} holds no scan")
    if len(volumes) != 1:
        keys = [str(v.metadata["series_key"]) for v in volumes if "series_key" in v.metadata]
        files = len(volumes) - len(keys)
        choices = [f"{', '.join(keys)}: choose one with --series"] * bool(keys)
        choices += [f"{files} NIfTI file{'s' * (files != 1)}: give the file itself"] * bool(files)
        raise InvalidInputError(f"{THE_INPUT} holds {len(volumes)} scans ({'; '.join(choices)})")
    (volume,) = volumes
    if frame is not None:
        return volume.frame(frame)
    if volume.frames > 1:
        raise InvalidInputError(
            f"{THE_INPUT} is 4D, with {volume.frames} volumes: choose one with --frame "
            f"(0 to {volume.frames - 1})"
        )
    return volume


def _mask(path: str) -> Volume:
    """The mask file as a volume, so that the library checks it lies on the scan's grid; its
    errors name it as the mask (the core names any file it reads "the input")."""
    from napari_scan_classifier.io import is_nifti
    from napari_scan_classifier.io.nifti import load_nifti

    if not is_nifti(path):
        raise InvalidInputError(f"{MASK}: not a NIfTI file (.nii, .nii.gz)")
    try:
        return load_nifti(path)
    except ScanClassifierError as error:
        raise type(error)(renamed(str(error), MASK)) from error


def _relabel(args: argparse.Namespace) -> int:
    record = CaseLibrary(args.library).relabel(args.case_id, args.label)
    print(f"case {record.case_id} is now {record.label}")
    return 0


def _delete(args: argparse.Namespace) -> int:
    library = CaseLibrary(args.library)
    for case_id in args.case_ids:
        library.delete(case_id)
        print(f"moved case {case_id} to the trash ({RESTORE_HINT})")
    return 0


def _restore(args: argparse.Namespace) -> int:
    library = CaseLibrary(args.library)
    for case_id in args.case_ids:
        record = library.restore(case_id)
        print(f"restored case {record.case_id}: {record.label}")
    return 0


def _export(args: argparse.Namespace) -> int:
    library = CaseLibrary(args.library)
    records = library.list() if args.ids is None else [library.get(c) for c in args.ids]
    path = library.export_zip(args.zip, [record.case_id for record in records])
    print(f"wrote {_count(len(records))} to {path.name}")
    return 0


def _import(args: argparse.Namespace) -> int:
    result = CaseLibrary(args.library).import_zip(args.path)
    for reason in result.skipped:
        print(f"skipped {reason}", file=sys.stderr)
    print(f"imported {_count(len(result.imported))}, skipped {len(result.skipped)}")
    return 0


MASK = "the mask (--mask)"
_Arguments = Callable[[argparse.ArgumentParser], None]
_ACTIONS: tuple[tuple[str, str, _Arguments, Callable[[argparse.Namespace], int]], ...] = (
    ("list", "the cases, their labels and how many per class", _list_arguments, _list),
    ("add", "save a scan with its label (and mask) as a case", _add_arguments, _add),
    ("relabel", "give a case another label", _relabel_arguments, _relabel),
    ("delete", f"move cases to the trash ({RESTORE_HINT})", _ids_arguments, _delete),
    ("restore", "bring deleted cases back from the trash", _ids_arguments, _restore),
    ("export", "write cases to a zip another library imports", _export_arguments, _export),
    ("import", "add the cases of an exported zip", _import_arguments, _import),
)
