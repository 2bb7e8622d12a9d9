"""The argument parser: every command, its options and their help."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from napari_scan_classifier import outputs
from napari_scan_classifier.cli._shared import AUTO_HELP
from napari_scan_classifier.cli.cases import _add_cases_command
from napari_scan_classifier.cli.classify import _add_classify_command, _demo_command
from napari_scan_classifier.cli.listing import _convert_command, _models_command, _series_command
from napari_scan_classifier.cli.rank import _add_rank_command
from napari_scan_classifier.cli.train import _add_training_commands


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
    _add_rank_command(commands)
    _add_cases_command(commands)
    return parser


def default_models_folder() -> Path:
    """Where the Train dock saves new model versions unless told otherwise, and where ``--model
    auto`` finds the installed models (``$NAPARI_SCAN_CLASSIFIER_MODELS`` overrides it)."""
    return outputs.models_folder()
