"""Command line: the same core as the napari plugin, for batch work on a headless machine.

Errors the user can act on are printed to stderr as one line each, with a non-zero exit and no
traceback. Outputs are checked before the work starts. Nothing printed names an input file or
folder (folders are often named after patients): inputs are ``<input N>``, by their position on the
command line, and everything printed passes through :class:`~.privacy.Redactor`.
"""

from napari_scan_classifier.cli.entry import main
from napari_scan_classifier.cli.parser import HelpFormatter, build_parser, default_models_folder
from napari_scan_classifier.cli.train import MAX_MODEL_NAME_CHARS, TrainingProgress

__all__ = [
    "MAX_MODEL_NAME_CHARS",
    "HelpFormatter",
    "TrainingProgress",
    "build_parser",
    "default_models_folder",
    "main",
]
