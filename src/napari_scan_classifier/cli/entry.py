"""The entry point: quiet TensorFlow, redacted output, one-line errors."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from napari_scan_classifier._tensorflow_isolation import VERBOSE_VARIABLE, NativeLogFilter
from napari_scan_classifier.cli._shared import _tell_path
from napari_scan_classifier.cli.parser import build_parser
from napari_scan_classifier.errors import ScanClassifierError
from napari_scan_classifier.privacy import RedactingStream, Redactor, numbered


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


def _inputs(args: argparse.Namespace) -> list[str]:
    """The command's inputs in the order they are numbered in messages (``<input N>``)."""
    if getattr(args, "paths", None):
        return list(args.paths)
    given = [getattr(args, "path", None), getattr(args, "cases", None)]
    return [p for p in given if p]
