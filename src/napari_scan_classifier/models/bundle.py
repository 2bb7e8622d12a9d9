"""Model bundles: a Keras model plus everything needed to use it correctly, validated on load.

A bundle is a folder (or the same two files in one ``.zip``)::

    model.keras   the network (Keras 3 format), outputs a dict of logits, see architectures.py
    bundle.json   BundleMetadata: classes, modality, input grid, intensity recipe, calibration,
                  applicability ranges, metrics, lineage, and the SHA-256 of every other
                  file of the bundle
    applicability.npz   the feature detector of :mod:`~napari_scan_classifier.applicability`,
                  present when ``bundle.json``'s ``applicability`` names one
    *.png, ...    optional extra files (training plots), published with the model

Bundles are immutable: saving never overwrites (a new model is a new version, made with
:func:`derive`), and a save writes into a temporary sibling and renames it into place, so a crash
leaves either the whole bundle or none of it.

Loading never runs code from the file: ``model.keras``'s config is checked first for Lambda layers
and for references to Python modules outside Keras and this package, then Keras loads it in
safe mode.

Integrity: saving records the SHA-256 of every file of the bundle but ``bundle.json`` itself in
its ``files`` field, and loading refuses a bundle whose files do not match (flipped bytes in the
weights change every answer and would otherwise load without complaint). This catches damage and
edits after saving, not a forger who rewrites ``bundle.json`` too. Bundles saved before hashes
were recorded (no ``files``) load unchecked.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import posixpath
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import keras
import numpy as np
from scipy.special import softmax

from napari_scan_classifier import limits, outputs
from napari_scan_classifier.applicability import FeatureDetector
from napari_scan_classifier.errors import InvalidBundleError, ResourceLimitError
from napari_scan_classifier.models.architectures import GRADCAM_LAYER
from napari_scan_classifier.preprocess import validate_intensity
from napari_scan_classifier.privacy import strip_paths

FORMAT_VERSION = 1
MODEL_FILE = "model.keras"
METADATA_FILE = "bundle.json"
DETECTOR_FILE = "applicability.npz"
MODALITIES = ("CT", "MR")
# Body regions a model may be made for (``body_region``); the scan's region is matched against
# them when a model is chosen by the scan (see choice.py).
REGIONS = (
    "head",
    "neck",
    "chest",
    "abdomen",
    "pelvis",
    "spine",
    "breast",
    "upper limb",
    "lower limb",
)
TASKS = ("volume", "region")
TRUSTED_MODULES = ("keras", "napari_scan_classifier")
MAX_METADATA_BYTES = 1_000_000
MAX_KERAS_CONFIG_BYTES = 50_000_000
# Memory one voxel of the model grid costs at inference: float32 input plus the full-resolution
# feature maps of a first convolution of 16 filters (an estimate, checked before loading).
BYTES_PER_GRID_VOXEL = 4 * (1 + 16)
_SHA256 = re.compile(r"[0-9a-f]{64}")


class BundleExistsError(InvalidBundleError, FileExistsError):
    """A bundle already exists where a new one was to be saved (versions are never overwritten)."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class BundleMetadata:
    """What ``bundle.json`` holds. Checked on construction; see the field comments for meaning."""

    name: str
    version: int  # 1, 2, ...: each fine-tuning makes the next one
    classes: list[str]  # model output k is classes[k]
    modality: str  # "CT" or "MR"
    task: str  # "volume": whole scan; "region": a box around a finding
    input_shape: tuple[int, int, int]  # model grid (D, H, W), one channel
    target_spacing_mm: tuple[float, float, float] | None  # None: stretch scan/region to fit
    intensity: dict[str, Any]  # preprocess.normalise recipe
    architecture: str  # key of ARCHITECTURES that built it
    parent_version: int | None = None
    temperature: float = 1.0  # calibrated probabilities = softmax(logits / temperature + bias)
    gradcam_layer: str = GRADCAM_LAYER
    # Default saliency map: {"method", "layer", ...figures} measured on validation cases
    saliency: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)  # data summary and metrics
    # input-check ranges ("checks") and the feature detector's threshold ("detector"), see
    # applicability.py
    applicability: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=_now)  # ISO 8601
    description: str = ""  # one line, shown in the model picker
    model_card: str = ""  # intended use, data, limits (Markdown)
    # file name -> SHA-256 (hex) of every other file of the bundle, written by save_bundle; not
    # part of the model's identity (a saved copy equals the metadata it was saved from)
    files: dict[str, str] = field(default_factory=dict, compare=False)
    class_bias: list[float] = field(default_factory=list)  # per class; empty: no bias
    # how a class is called from the calibrated probabilities: {"kind": "argmax"}, or for two
    # classes {"kind": "threshold", "positive_class": ..., "threshold": ...}; plus a description
    decision_rule: dict[str, Any] = field(default_factory=lambda: {"kind": "argmax"})
    calibration: dict[str, Any] = field(default_factory=dict)  # how it was fitted, on what
    # the body region (one of REGIONS) the model is made for; None in bundles saved before it
    # was recorded (see choice.py for what stands in for it then)
    body_region: str | None = None

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (n, classes) of volume logits (n, classes)."""
        return calibrated(logits, self.temperature, self.class_bias)

    def decide(self, probabilities: np.ndarray) -> np.ndarray:
        """Class index per row of calibrated ``probabilities`` (n, classes), by the rule."""
        p = np.asarray(probabilities, dtype=float)
        rule = self.decision_rule
        if rule["kind"] != "threshold":
            return p.argmax(axis=1)
        positive = self.classes.index(rule["positive_class"])
        return np.where(p[:, positive] >= rule["threshold"], positive, 1 - positive)

    def __post_init__(self) -> None:
        _check_metadata(self)
        # Own copies, so a derived version never shares mutable parts with its parent.
        self.classes = list(self.classes)
        self.intensity = copy.deepcopy(dict(self.intensity))
        self.training = copy.deepcopy(self.training)
        self.applicability = copy.deepcopy(dict(self.applicability))
        self.saliency = copy.deepcopy(self.saliency)
        self.input_shape = tuple(int(n) for n in self.input_shape)  # type: ignore[assignment]
        if self.target_spacing_mm is not None:
            self.target_spacing_mm = tuple(float(s) for s in self.target_spacing_mm)  # type: ignore[assignment]
        self.temperature = float(self.temperature)
        self.files = dict(self.files)
        self.class_bias = [float(b) for b in self.class_bias]
        self.decision_rule = copy.deepcopy(dict(self.decision_rule))
        self.calibration = copy.deepcopy(dict(self.calibration))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, with the format version."""
        return {"format_version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BundleMetadata:
        """Metadata from parsed ``bundle.json``; unknown keys are ignored."""
        if not isinstance(data, Mapping):
            raise InvalidBundleError(f"{METADATA_FILE} must hold a JSON object")
        if data.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
            raise InvalidBundleError(
                f"{METADATA_FILE} has format version {data.get('format_version')!r}; this "
                f"version of the plugin reads format {FORMAT_VERSION}: update the plugin"
            )
        known = {f.name for f in fields(cls)}
        required = {
            f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
        }
        missing = sorted(required - set(data))
        if missing:
            raise InvalidBundleError(f"{METADATA_FILE} lacks the field(s): {', '.join(missing)}")
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as error:
            reason = strip_paths(str(error).splitlines()[0][:200] if str(error) else "")
            raise InvalidBundleError(
                f"{METADATA_FILE} has a field of the wrong type ({reason or type(error).__name__})"
            ) from None
        except RecursionError:
            raise InvalidBundleError(f"{METADATA_FILE} is nested too deeply") from None


@dataclass
class Bundle:
    """A loaded (or about to be saved) model with its metadata; ``path`` is where it came from;
    ``detector`` is saved as DETECTOR_FILE when ``metadata.applicability`` describes it."""

    metadata: BundleMetadata
    model: keras.Model
    path: Path | None = None
    detector: FeatureDetector | None = None


def calibrated(
    logits: np.ndarray, temperature: float, bias: list[float] | tuple[float, ...] | None = None
) -> np.ndarray:
    """``softmax(logits / temperature + bias)`` row by row (no bias: plain temperature)."""
    z = np.asarray(logits, dtype=float) / float(temperature)
    if bias is not None and len(bias):
        z = z + np.asarray(bias, dtype=float)
    return softmax(z, axis=-1)


def next_version(metadata: BundleMetadata) -> int:
    """The version number a model derived from ``metadata`` gets."""
    return metadata.version + 1


def derive(metadata: BundleMetadata, **changes: Any) -> BundleMetadata:
    """Metadata for a new model made from this one: next version, this one as parent, new time."""
    lineage = {
        "version": next_version(metadata),
        "parent_version": metadata.version,
        "created": _now(),
        "files": {},  # the new version's files get their own hashes when saved
    }
    return replace(metadata, **{**lineage, **changes})


def check_model(metadata: BundleMetadata, model: keras.Model) -> None:
    """Raise InvalidBundleError unless ``model`` fits ``metadata`` (input grid, classes, layers)."""
    if len(model.inputs) != 1:
        raise InvalidBundleError(f"the model has {len(model.inputs)} inputs; a scan model has one")
    expected = (*metadata.input_shape, 1)
    actual = tuple(model.inputs[0].shape[1:])
    if actual != expected:
        raise InvalidBundleError(
            f"the model takes input of shape {actual} but {METADATA_FILE} says "
            f"input_shape {metadata.input_shape} (plus one channel)"
        )
    outputs = model.output
    if not isinstance(outputs, dict) or "volume" not in outputs:
        raise InvalidBundleError("the model must output a dict of logits with a 'volume' entry")
    for key, tensor in outputs.items():
        if tensor.shape[-1] != len(metadata.classes):
            raise InvalidBundleError(
                f"the model's '{key}' output has {tensor.shape[-1]} units but {METADATA_FILE} "
                f"lists {len(metadata.classes)} classes {metadata.classes}"
            )
    try:
        model.get_layer(metadata.gradcam_layer)
    except ValueError:
        raise InvalidBundleError(
            f"the model has no layer '{metadata.gradcam_layer}' (gradcam_layer)"
        ) from None


def check_detector(metadata: BundleMetadata, detector: FeatureDetector | None) -> None:
    """Raise InvalidBundleError unless the detector and ``applicability.detector`` agree."""
    info = metadata.applicability.get("detector")
    if not info:
        if detector is not None:
            raise InvalidBundleError(
                f"the bundle has a feature detector but {METADATA_FILE} does not describe it"
            )
        return
    if detector is None:
        raise InvalidBundleError(
            f"{METADATA_FILE} names an applicability detector but the bundle has no {DETECTOR_FILE}"
        )
    n_classes, n_features = detector.means.shape
    if n_features != info.get("features") or n_classes > len(metadata.classes):
        raise InvalidBundleError(
            f"{DETECTOR_FILE} holds {n_classes} class means of {n_features} features; "
            f"{METADATA_FILE} says {info.get('features')} features and "
            f"{len(metadata.classes)} classes"
        )


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


def _check_metadata(m: BundleMetadata) -> None:
    """Field-by-field checks with messages naming the field."""
    _expect(_is_text(m.name), "name must be a non-empty text")
    _expect(_is_int(m.version) and m.version >= 1, "version must be a whole number >= 1")
    _expect(
        m.parent_version is None or (_is_int(m.parent_version) and m.parent_version >= 1),
        "parent_version must be a whole number >= 1, or null",
    )
    _expect(
        isinstance(m.classes, (list, tuple))
        and len(m.classes) >= 2
        and all(_is_text(c) for c in m.classes)
        and len(set(m.classes)) == len(m.classes),
        "classes must be a list of at least two different names",
    )
    _expect(m.modality in MODALITIES, f"modality must be one of {MODALITIES}")
    _expect(m.task in TASKS, f"task must be one of {TASKS}")
    _expect(
        m.body_region is None or m.body_region in REGIONS,
        f"body_region must be one of {REGIONS}, or null",
    )
    _expect(_is_triple(m.input_shape, _is_int), "input_shape must be three whole numbers (D, H, W)")
    voxels = math.prod(m.input_shape)
    limits.check_memory(
        voxels * BYTES_PER_GRID_VOXEL,
        f"{METADATA_FILE}: the input grid {' x '.join(map(str, m.input_shape))}",
        InvalidBundleError,
    )
    _expect(
        m.target_spacing_mm is None or _is_triple(m.target_spacing_mm, _is_number),
        "target_spacing_mm must be three positive numbers (z, y, x) in mm, or null",
    )
    _check_intensity(m.intensity, m.modality)
    _expect(_is_text(m.architecture), "architecture must be a non-empty text")
    _expect(
        _is_number(m.temperature) and m.temperature > 0, "temperature must be a positive number"
    )
    _expect(_is_text(m.gradcam_layer), "gradcam_layer must be a layer name")
    _expect(isinstance(m.training, dict), "training must be a JSON object")
    _check_applicability(m.applicability)
    _expect(
        isinstance(m.saliency, dict) and _is_text(m.saliency.get("method", "-")),
        "saliency must be a JSON object naming its method",
    )
    _expect(_is_iso_time(m.created), "created must be an ISO 8601 date and time")
    _expect(isinstance(m.description, str), "description must be text")
    _expect(isinstance(m.model_card, str), "model_card must be text")
    _check_files(m.files)
    _expect(
        isinstance(m.class_bias, (list, tuple))
        and len(m.class_bias) in (0, len(m.classes))
        and all(_is_number(b) for b in m.class_bias),
        "class_bias must list one number per class, or be empty",
    )
    _check_decision_rule(m.decision_rule, m.classes)
    _expect(isinstance(m.calibration, dict), "calibration must be a JSON object")


def _check_decision_rule(rule: Any, classes: list[str]) -> None:
    _expect(
        isinstance(rule, dict) and rule.get("kind") in ("argmax", "threshold"),
        "decision_rule must be an object whose kind is 'argmax' or 'threshold'",
    )
    if rule["kind"] == "threshold":
        threshold = rule.get("threshold")
        _expect(
            len(classes) == 2
            and rule.get("positive_class") in classes
            and _is_number(threshold)
            and 0 < threshold < 1,
            "decision_rule: a threshold needs two classes, a positive_class among them and a "
            "threshold between 0 and 1",
        )


def _check_files(files: Any) -> None:
    _expect(
        isinstance(files, dict)
        and all(
            isinstance(name, str)
            and name not in ("", ".", "..", METADATA_FILE)
            and name == posixpath.basename(name)
            and "\\" not in name
            and isinstance(digest, str)
            and _SHA256.fullmatch(digest)
            for name, digest in files.items()
        ),
        "files must map plain file names to SHA-256 digests (64 lowercase hex digits)",
    )
    _expect(not files or MODEL_FILE in files, f"files must list {MODEL_FILE}")


def _check_intensity(intensity: Any, modality: str) -> None:
    try:
        validate_intensity(intensity)
    except ValueError as error:
        raise InvalidBundleError(f"intensity: {error}") from None
    is_window = intensity["kind"] == "ct_window"
    _expect(
        is_window == (modality == "CT"),
        "intensity: CT models use a 'ct_window' (Hounsfield units); MR models use 'zscore' "
        "or 'percentile'",
    )


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidBundleError(f"{METADATA_FILE}: {message}")


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_triple(value: Any, kind: Any) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and all(kind(v) and v > 0 for v in value)
    )


def _is_iso_time(value: Any) -> bool:
    try:
        datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return False
    return True


def _check_applicability(applicability: Any) -> None:
    _expect(isinstance(applicability, dict), "applicability must be a JSON object")
    detector = applicability.get("detector")
    _expect(
        detector is None
        or (
            isinstance(detector, dict)
            and _is_number(detector.get("threshold"))
            and _is_int(detector.get("features"))
            and _is_number(detector.get("false_abstention_rate"))
        ),
        "applicability.detector must give a threshold, the number of features and the "
        "false-abstention rate",
    )
