"""SHA-256 of a bundle's files, checked against those ``bundle.json`` records."""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Callable
from pathlib import Path

from napari_scan_classifier import limits
from napari_scan_classifier.errors import InvalidBundleError
from napari_scan_classifier.models.bundle.constants import (
    METADATA_FILE,
)
from napari_scan_classifier.models.bundle.metadata import BundleMetadata


def verify_files(metadata: BundleMetadata, digest: Callable[[str], str | None]) -> None:
    """Raise InvalidBundleError unless every file ``metadata.files`` lists has its recorded
    SHA-256; ``digest(name)`` gives a file's SHA-256 (hex), None when the bundle lacks it."""
    for name, expected in metadata.files.items():
        actual = digest(name)
        if actual is None:
            raise InvalidBundleError(
                f"{name} is missing: the model file was modified or damaged after it was saved "
                f"({METADATA_FILE} lists it); get a fresh copy of the model"
            )
        if actual != expected:
            raise InvalidBundleError(
                f"{name} was modified or damaged after the model was saved: its SHA-256 does not "
                f"match the one in {METADATA_FILE}; get a fresh copy of the model"
            )


def _file_digest(file: Path) -> str | None:
    """SHA-256 (hex) of a file, read in chunks; None when it is not a file."""
    if not file.is_file():
        return None
    sha = hashlib.sha256()
    with open(file, "rb") as handle:
        while chunk := handle.read(limits.CHUNK_BYTES):
            sha.update(chunk)
    return sha.hexdigest()


def _zip_digest(zf: zipfile.ZipFile, member: str, name: str) -> str | None:
    """SHA-256 (hex) of a zip member, read with the usual limits; None when there is none."""
    try:
        info = zf.getinfo(member)
    except KeyError:
        return None
    return hashlib.sha256(limits.read_member(zf, info, name, InvalidBundleError)).hexdigest()
