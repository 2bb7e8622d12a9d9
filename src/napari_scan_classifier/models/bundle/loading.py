"""Loading a bundle folder or zip within resource limits, never running code from it."""

from __future__ import annotations

import os
import posixpath
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras

from napari_scan_classifier import limits
from napari_scan_classifier.applicability import FeatureDetector
from napari_scan_classifier.errors import InvalidBundleError, ResourceLimitError
from napari_scan_classifier.models.bundle.constants import (
    DETECTOR_FILE,
    MAX_KERAS_CONFIG_BYTES,
    MAX_METADATA_BYTES,
    METADATA_FILE,
    MODEL_FILE,
    TRUSTED_MODULES,
)
from napari_scan_classifier.models.bundle.integrity import _file_digest, _zip_digest, verify_files
from napari_scan_classifier.models.bundle.metadata import Bundle, BundleMetadata
from napari_scan_classifier.models.bundle.validation import check_detector, check_model
from napari_scan_classifier.privacy import strip_paths


def load_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Load and validate a bundle folder or .zip; every problem is an InvalidBundleError."""
    source = Path(path)
    try:
        if source.is_dir():
            metadata = _read_metadata(_read_member(source, METADATA_FILE))
            verify_files(metadata, lambda name: _file_digest(source / name))
            model = _load_model(source / MODEL_FILE)
            detector = _detector(metadata, lambda: (source / DETECTOR_FILE).read_bytes())
        elif source.is_file() and zipfile.is_zipfile(source):
            metadata, model, detector = _load_zip(source)
        elif source.is_file() and source.suffix.lower() == ".zip":
            raise InvalidBundleError("it is not a readable zip file")
        elif source.exists():
            raise InvalidBundleError("it is neither a bundle folder nor a .zip file")
        else:
            raise InvalidBundleError("it does not exist")
        check_model(metadata, model)
        check_detector(metadata, detector)
    except (InvalidBundleError, ResourceLimitError) as error:
        raise InvalidBundleError(f"Model bundle '{source.name}' cannot be used: {error}") from None
    return Bundle(metadata, model, source, detector)


def read_metadata(path: str | os.PathLike[str]) -> BundleMetadata:
    """The validated ``bundle.json`` of a bundle folder, without loading its model: what a list
    of models needs (the model is checked when it is loaded to be used)."""
    source = Path(path)
    try:
        return _read_metadata(_read_member(source, METADATA_FILE))
    except (InvalidBundleError, ResourceLimitError) as error:
        raise InvalidBundleError(f"Model bundle '{source.name}' cannot be used: {error}") from None


def _detector(metadata: BundleMetadata, read: Callable[[], bytes]) -> FeatureDetector | None:
    """The detector ``metadata`` names, from the bytes ``read()`` gives; None if it names none."""
    if not metadata.applicability.get("detector"):
        return None
    try:
        return FeatureDetector.from_bytes(read())
    except (OSError, KeyError):
        raise InvalidBundleError(
            f"{METADATA_FILE} names an applicability detector but the bundle has no {DETECTOR_FILE}"
        ) from None
    except ValueError as error:
        raise InvalidBundleError(f"{DETECTOR_FILE} is damaged: {error}") from None


def _load_zip(source: Path) -> tuple[BundleMetadata, keras.Model, FeatureDetector | None]:
    """Read bundle.json, then stream model.keras to a temporary file with a running total (a
    small zip may declare gigabytes; see limits.py)."""
    with limits.open_zip(source, "the zip", InvalidBundleError) as zf:
        folder = _bundle_folder_in(zf)
        info = zf.getinfo(posixpath.join(folder, METADATA_FILE))
        if info.file_size > MAX_METADATA_BYTES:
            raise InvalidBundleError(f"{METADATA_FILE} is implausibly large")
        metadata = _read_metadata(limits.read_member(zf, info, METADATA_FILE, InvalidBundleError))
        try:
            model_info = zf.getinfo(posixpath.join(folder, MODEL_FILE))
        except KeyError:
            raise InvalidBundleError(f"the zip has no {MODEL_FILE}") from None
        with tempfile.TemporaryDirectory() as tmp:
            model_path = Path(tmp) / MODEL_FILE
            limits.extract_member(
                zf, model_info, model_path, MODEL_FILE, InvalidBundleError, _model_limit()
            )
            verify_files(
                metadata,
                lambda name: (
                    _file_digest(model_path)
                    if name == MODEL_FILE
                    else _zip_digest(zf, posixpath.join(folder, name), name)
                ),
            )
            detector = _detector(
                metadata,
                lambda: limits.read_member(
                    zf,
                    zf.getinfo(posixpath.join(folder, DETECTOR_FILE)),
                    DETECTOR_FILE,
                    InvalidBundleError,
                ),
            )
            return metadata, _load_model(model_path), detector


def _model_limit() -> int:
    """Bytes a model file may hold: Keras reads its weights into memory."""
    return limits.memory_budget()


def _bundle_folder_in(zf: zipfile.ZipFile) -> str:
    """The zip folder holding bundle.json: the root, or the one folder a zipped bundle sits in."""
    folders = {
        posixpath.dirname(n) for n in zf.namelist() if posixpath.basename(n) == METADATA_FILE
    }
    if "" in folders:
        return ""
    if len(folders) == 1 and "/" not in next(iter(folders)):
        return next(iter(folders))
    raise InvalidBundleError(f"the zip has no {METADATA_FILE} at its top level")


def _read_member(folder: Path, name: str) -> bytes:
    file = folder / name
    if not file.is_file():
        raise InvalidBundleError(f"the folder has no {name}")
    if name == METADATA_FILE and file.stat().st_size > MAX_METADATA_BYTES:
        raise InvalidBundleError(f"{METADATA_FILE} is implausibly large")
    return file.read_bytes()


def _read_metadata(raw: bytes) -> BundleMetadata:
    data = limits.parse_json(raw, METADATA_FILE, InvalidBundleError, MAX_METADATA_BYTES)
    return BundleMetadata.from_dict(data)


def _load_model(file: Path) -> keras.Model:
    """Load ``model.keras`` without running code from it (see the module doc)."""
    if not file.is_file():
        raise InvalidBundleError(f"the bundle has no {MODEL_FILE}")
    code = _code_in(_keras_config(file))
    if code:
        raise InvalidBundleError(
            f"{MODEL_FILE} contains code ({code}) and was refused: models are only loaded if "
            "they cannot run code on this computer"
        )
    try:
        model = keras.saving.load_model(file, safe_mode=True, compile=False)
    except Exception as error:
        text = str(error)
        if "safe_mode" in text or "lambda" in text.lower():
            raise InvalidBundleError(f"{MODEL_FILE} contains code and was refused") from None
        reason = strip_paths(text.strip().splitlines()[0][:300]) if text.strip() else ""
        reason = reason or type(error).__name__
        raise InvalidBundleError(f"{MODEL_FILE} could not be loaded ({reason})") from None
    if not isinstance(model, keras.Model):
        raise InvalidBundleError(f"{MODEL_FILE} does not hold a Keras model")
    return model


def _keras_config(file: Path) -> Any:
    """The architecture config inside a ``.keras`` file (itself a zip), after checking that no
    member of it is encrypted, damaged or expands beyond the budget."""
    try:
        zf = limits.open_zip(file, MODEL_FILE, InvalidBundleError)
    except InvalidBundleError:
        raise InvalidBundleError(f"{MODEL_FILE} is not a Keras 3 model file") from None
    with zf:
        budget = limits.memory_budget()
        declared = 0
        for info in zf.infolist():
            limits.check_member(info, f"{MODEL_FILE}/{info.filename}", InvalidBundleError, budget)
            declared += info.file_size
        limits.check_memory(declared, f"{MODEL_FILE} (unpacked)", InvalidBundleError)
        try:
            info = zf.getinfo("config.json")
        except KeyError:
            raise InvalidBundleError(f"{MODEL_FILE} is not a Keras 3 model file") from None
        what = f"{MODEL_FILE}/config.json"
        raw = limits.read_member(zf, info, what, InvalidBundleError, MAX_KERAS_CONFIG_BYTES)
        return limits.parse_json(raw, what, InvalidBundleError)


def _code_in(config: Any) -> str | None:
    """Describe the first part of a Keras config that would run code when loaded, or None."""
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("class_name") in ("Lambda", "__lambda__"):
                return "a Lambda layer holding Python code"
            module = node.get("module")
            if isinstance(module, str) and module.split(".")[0] not in TRUSTED_MODULES:
                return f"a reference to the Python module '{module}'"
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return None
