"""Statuses, method titles and defaults shared by the results modules."""

from __future__ import annotations

from napari_scan_classifier.saliency import TITLES

# "default": the method the bundle records as most faithful (see saliency.selection)
SALIENCY_METHODS = ("default", "gradcam", "integrated_gradients", "occlusion", "none")
SALIENCY_TITLES = {"default": "Model's default", **TITLES, "none": "None"}
UNCERTAINTY_TITLES = {"mc_dropout": "Monte Carlo dropout", "tta": "test-time augmentation"}
DEFAULT_PASSES = 10
BATCH_SIZE = 8  # scans per forward batch on the command line: bounded memory, shared overhead
OUTPUT_SUFFIXES = (".json", ".csv")
OUT_OF_DISTRIBUTION = "out_of_distribution"
NO_MODEL = "no_model"  # status of a series no installed model covers (model chosen by the scan)
ANSWERED = ("classified", OUT_OF_DISTRIBUTION)  # statuses of rows that carry probabilities
