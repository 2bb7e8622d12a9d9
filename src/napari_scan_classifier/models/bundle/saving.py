"""Saving a bundle: staged beside its target and published atomically, never replacing one."""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import zipfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from napari_scan_classifier import outputs
from napari_scan_classifier.errors import InvalidBundleError
from napari_scan_classifier.models.bundle.constants import (
    DETECTOR_FILE,
    METADATA_FILE,
    MODEL_FILE,
)
from napari_scan_classifier.models.bundle.integrity import _file_digest
from napari_scan_classifier.models.bundle.metadata import Bundle, BundleMetadata
from napari_scan_classifier.models.bundle.validation import check_detector, check_model


class BundleExistsError(InvalidBundleError, FileExistsError):
    """A bundle already exists where a new one was to be saved (versions are never overwritten)."""


def save_bundle(
    bundle: Bundle,
    path: str | os.PathLike[str],
    extra_files: Mapping[str, bytes] | None = None,
) -> Path:
    """Save as a folder (or a zip if ``path`` ends in .zip); refuses to replace anything.

    ``extra_files`` (file name -> content, e.g. training plots as PNG) are staged and published
    with the model, so they appear together with it or not at all.
    """
    target = Path(path)
    if target.suffix.lower() == ".zip":
        return save_bundle_zip(bundle, target, extra_files)
    check_model(bundle.metadata, bundle.model)
    check_detector(bundle.metadata, bundle.detector)
    _check_extra_names(extra_files or {})
    _refuse_existing(target)
    staging = _staging_beside(target)
    try:
        _write_parts(bundle, staging, extra_files or {})
        os.rename(staging, target)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError) and target.exists():
            raise BundleExistsError(_exists_message(target)) from None
        raise
    return target


def save_bundle_zip(
    bundle: Bundle,
    path: str | os.PathLike[str],
    extra_files: Mapping[str, bytes] | None = None,
) -> Path:
    """Save as one .zip holding ``model.keras``, ``bundle.json`` and any ``extra_files``;
    refuses to replace anything."""
    target = Path(path)
    extras = dict(extra_files or {})
    check_model(bundle.metadata, bundle.model)
    check_detector(bundle.metadata, bundle.detector)
    _check_extra_names(extras)
    _refuse_existing(target)
    staging = _staging_beside(target)
    try:
        _write_parts(bundle, staging, extras)
        archive = staging / "bundle.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.write(staging / MODEL_FILE, MODEL_FILE, zipfile.ZIP_STORED)
            zf.write(staging / METADATA_FILE, METADATA_FILE, zipfile.ZIP_DEFLATED)
            for name in extras:
                zf.write(staging / name, name, zipfile.ZIP_STORED)
            if bundle.detector is not None:
                zf.write(staging / DETECTOR_FILE, DETECTOR_FILE, zipfile.ZIP_STORED)
        _fsync(archive)
        _publish_file(archive, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _write_parts(bundle: Bundle, folder: Path, extra_files: Mapping[str, bytes]) -> None:
    """The model, the extra files, then bundle.json with their SHA-256."""
    bundle.model.save(folder / MODEL_FILE)
    parts = dict(extra_files)
    if bundle.detector is not None:
        parts[DETECTOR_FILE] = bundle.detector.to_bytes()
    for name, content in parts.items():
        (folder / name).write_bytes(content)
    files = {name: _file_digest(folder / name) for name in (MODEL_FILE, *parts)}
    write_metadata(replace(bundle.metadata, files=files), folder / METADATA_FILE)
    for name in (MODEL_FILE, METADATA_FILE, *parts):
        _fsync(folder / name)


def write_metadata(metadata: BundleMetadata, file: Path) -> None:
    """``bundle.json`` as every bundle has it (two-space indent, UTF-8, final newline)."""
    text = json.dumps(metadata.to_dict(), indent=2, ensure_ascii=False)
    file.write_text(text + "\n", encoding="utf-8")


def _check_extra_names(extra_files: Mapping[str, bytes]) -> None:
    """Extra files are plain names beside the model; they may not replace its two parts."""
    for name in extra_files:
        if (
            not isinstance(name, str)
            or name in (MODEL_FILE, METADATA_FILE, DETECTOR_FILE, "", ".", "..")
            or name != posixpath.basename(name)
            or "\\" in name
        ):
            raise ValueError(f"extra file name {name!r} must be a plain file name")


def _publish_file(staged: Path, target: Path) -> None:
    """Move ``staged`` to ``target`` unless ``target`` exists (a hard link is atomic and never
    replaces; on file systems without links, check then rename)."""
    try:
        os.link(staged, target)
    except FileExistsError:
        raise BundleExistsError(_exists_message(target)) from None
    except OSError:
        _refuse_existing(target)
        os.replace(staged, target)


def _staging_beside(target: Path) -> Path:
    """A fresh hidden folder next to ``target``; stale ones of killed saves are removed."""
    return outputs.staging_folder(target)


def _refuse_existing(target: Path) -> None:
    if target.exists() or target.is_symlink():
        raise BundleExistsError(_exists_message(target))


def _exists_message(target: Path) -> str:
    return (
        f"'{target.name}' already exists; model versions are never overwritten, "
        "save the new model under a new version or name"
    )


def _fsync(file: Path) -> None:
    with open(file, "rb") as handle:
        os.fsync(handle.fileno())
