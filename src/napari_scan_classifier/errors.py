"""One exception family per kind of failure, with messages a clinician-researcher can act on.

Messages name the file (its name, never patient fields) and what is wrong with it.
"""

from __future__ import annotations


class ScanClassifierError(Exception):
    """Base class: everything the plugin reports to the user instead of a traceback."""


class UnreadableScanError(ScanClassifierError):
    """A file or folder could not be read as a scan (not DICOM/NIfTI, truncated, no images)."""


class UnsupportedTransferSyntaxError(UnreadableScanError):
    """Pixel data is compressed with a syntax no installed decoder handles."""


class GeometryError(UnreadableScanError):
    """Slices cannot be placed in space consistently (e.g. mixed orientations in one stack)."""


class ResourceLimitError(ScanClassifierError):
    """A file declares more content than the memory or disk budget allows (see limits.py)."""


class InvalidBundleError(ScanClassifierError):
    """A model bundle is missing parts, inconsistent, or unsafe to load."""


class InvalidInputError(ScanClassifierError):
    """The data handed to a model is not something it can classify (2D, RGB, NaN, empty)."""


class CaseLibraryError(ScanClassifierError):
    """A case could not be saved, loaded or changed in the case library."""


class TrainingError(ScanClassifierError):
    """Training cannot start or could not finish (too few cases, one class only, ...)."""


class CancelledError(ScanClassifierError):
    """The user cancelled a long-running job."""


class DicomWebError(ScanClassifierError):
    """A DICOMweb server could not be reached, refused the request or lacks what was asked for."""
