"""Pieces every command uses: tables, local paths on request, help texts."""

from __future__ import annotations

import argparse
import sys


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


DEMO = "demo_ct_lesion"
MODEL_HELP = f"model bundle folder or .zip, or a shipped model's name ({DEMO})"
AUTO_HELP = (
    "model bundle folder or .zip, a shipped model's name, or 'auto': for each scan, the shipped "
    "or installed model made for its modality and body region (printed with the reason)"
)
CLASSES_HELP = (
    "names of an npz file's label indices 0, 1, ... in order (a file's own class_names win)"
)
