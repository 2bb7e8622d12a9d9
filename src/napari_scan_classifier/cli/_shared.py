"""Pieces every command uses: tables, local paths on request, help texts."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from napari_scan_classifier.privacy import Redactor

if TYPE_CHECKING:
    from napari_scan_classifier.io import SkippedFile


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]], widths: list[int]) -> None:
    """Columns padded to ``widths`` (the last one as it is), under a header row."""
    for row in [header, *rows]:
        padded = [f"{cell:<{width}}" for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*padded, row[-1]]))


def _tell_path(args: argparse.Namespace, line: str) -> None:
    """With ``--show-paths`` only: a line with a local path, on stderr past the redaction (the
    user asked, on their own machine); never in stdout or a results file."""
    if args.local_stderr is not None:
        sys.stderr.flush()
        print(line, file=args.local_stderr, flush=True)


def _print_skipped(args: argparse.Namespace, skipped: Sequence[SkippedFile]) -> None:
    """The files of ``args.path`` (input 1) that were left out, and why, on stderr; where they
    are only with ``--show-paths``."""
    redact = Redactor([args.path])
    for file in skipped:
        redact.found(file.local_path(), args.path)
        print(f"skipped a file of input 1: {redact(str(file))}", file=sys.stderr)
        where = f" of {file.within}" * bool(file.within)
        _tell_path(args, f"file {file.position}{where} of input 1 is {file.local_path()}")


DEMO = "demo_ct_lesion"
MODEL_HELP = f"model bundle folder or .zip, or a shipped model's name ({DEMO})"
AUTO_HELP = (
    "model bundle folder or .zip, a shipped model's name, or 'auto': for each scan, the shipped "
    "or installed model made for its modality and body region (printed with the reason)"
)
CLASSES_HELP = (
    "names of an npz file's label indices 0, 1, ... in order (a file's own class_names win)"
)
