"""Classification results as people see them, for the command line and the napari widget alike.

One job serves both faces: classify scans (several in one batch), explain each with a saliency map
on the scan's own grid, and turn the outcome into JSON-ready dicts, CSV rows, NIfTI maps and short
text lines. Series are labelled from de-identified fields only (modality, series number,
description, the reader's hashed series key and a running index); no patient field and no file or
folder name is ever written: inputs are numbered by their position on the command line, and the
reasons files were skipped pass through :class:`~.privacy.Redactor` (third-party errors quote
paths).
"""

from napari_scan_classifier.results.batch import (
    at_frame,
    chosen_models_summary,
    classify_paths,
    classify_series,
    frame_fields,
    no_model_row,
    result_row,
    series_label,
    series_row,
    status_of,
)
from napari_scan_classifier.results.constants import (
    ANSWERED,
    BATCH_SIZE,
    DEFAULT_PASSES,
    NO_MODEL,
    OUT_OF_DISTRIBUTION,
    OUTPUT_SUFFIXES,
    SALIENCY_METHODS,
    SALIENCY_TITLES,
    UNCERTAINTY_TITLES,
)
from napari_scan_classifier.results.report import (
    BatchReport,
    check_output,
    json_safe,
    to_csv,
    to_json,
    write_report,
)
from napari_scan_classifier.results.scan import (
    ScanResult,
    check_saliency_class,
    classify_scan,
    explain,
    explain_prediction,
    predict,
    resolve_bundle,
)
from napari_scan_classifier.results.text import (
    ood_lines,
    probability_lines,
    row_lines,
    saliency_title,
    slice_text,
    summary_lines,
)

__all__ = [
    "ANSWERED",
    "BATCH_SIZE",
    "DEFAULT_PASSES",
    "NO_MODEL",
    "OUTPUT_SUFFIXES",
    "OUT_OF_DISTRIBUTION",
    "SALIENCY_METHODS",
    "SALIENCY_TITLES",
    "UNCERTAINTY_TITLES",
    "BatchReport",
    "ScanResult",
    "at_frame",
    "check_output",
    "check_saliency_class",
    "chosen_models_summary",
    "classify_paths",
    "classify_scan",
    "classify_series",
    "explain",
    "explain_prediction",
    "frame_fields",
    "json_safe",
    "no_model_row",
    "ood_lines",
    "predict",
    "probability_lines",
    "resolve_bundle",
    "result_row",
    "row_lines",
    "saliency_title",
    "series_label",
    "series_row",
    "slice_text",
    "status_of",
    "summary_lines",
    "to_csv",
    "to_json",
    "write_report",
]
