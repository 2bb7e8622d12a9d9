"""Model bundles: a Keras model plus everything needed to use it correctly, validated on load.

A bundle is a folder (or the same two files in one ``.zip``)::

    model.keras   the network (Keras 3 format), outputs a dict of logits, see architectures.py
    bundle.json   BundleMetadata: classes, modality, input grid, intensity recipe, calibration,
                  applicability ranges, metrics, lineage
    applicability.npz   the feature detector of :mod:`~napari_scan_classifier.applicability`,
                  present when ``bundle.json``'s ``applicability`` names one

Bundles are immutable: saving never overwrites (a new model is a new version, made with
:func:`derive`), and a save writes into a temporary sibling and renames it into place, so a crash
leaves either the whole bundle or none of it.

Loading never runs code from the file: ``model.keras``'s config is checked first for Lambda layers
and for references to Python modules outside Keras and this package, then Keras loads it in
safe mode.
"""

from __future__ import annotations

import copy
import json
import math
import os
import posixpath
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import keras

from napari_scan_classifier.applicability import FeatureDetector
from napari_scan_classifier.errors import InvalidBundleError
from napari_scan_classifier.models.architectures import GRADCAM_LAYER
from napari_scan_classifier.preprocess import validate_intensity

FORMAT_VERSION = 1
MODEL_FILE = "model.keras"
METADATA_FILE = "bundle.json"
DETECTOR_FILE = "applicability.npz"
MODALITIES = ("CT", "MR")
TASKS = ("volume", "region")
TRUSTED_MODULES = ("keras", "napari_scan_classifier")
MAX_METADATA_BYTES = 1_000_000


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
    temperature: float = 1.0  # calibrated probabilities = softmax(logits / temperature)
    gradcam_layer: str = GRADCAM_LAYER
    training: dict[str, Any] = field(default_factory=dict)  # data summary and metrics
    # input-check ranges ("checks") and the feature detector's threshold ("detector"), see
    # applicability.py
    applicability: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=_now)  # ISO 8601
    description: str = ""  # one line, shown in the model picker
    model_card: str = ""  # intended use, data, limits (Markdown)

    def __post_init__(self) -> None:
        _check_metadata(self)
        # Own copies, so a derived version never shares mutable parts with its parent.
        self.classes = list(self.classes)
        self.intensity = copy.deepcopy(dict(self.intensity))
        self.training = copy.deepcopy(self.training)
        self.applicability = copy.deepcopy(dict(self.applicability))
        self.input_shape = tuple(int(n) for n in self.input_shape)  # type: ignore[assignment]
        if self.target_spacing_mm is not None:
            self.target_spacing_mm = tuple(float(s) for s in self.target_spacing_mm)  # type: ignore[assignment]
        self.temperature = float(self.temperature)

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
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Bundle:
    """A loaded (or about to be saved) model with its metadata; ``path`` is where it came from;
    ``detector`` is saved as DETECTOR_FILE when ``metadata.applicability`` describes it."""

    metadata: BundleMetadata
    model: keras.Model
    path: Path | None = None
    detector: FeatureDetector | None = None


def next_version(metadata: BundleMetadata) -> int:
    """The version number a model derived from ``metadata`` gets."""
    return metadata.version + 1


def derive(metadata: BundleMetadata, **changes: Any) -> BundleMetadata:
    """Metadata for a new model made from this one: next version, this one as parent, new time."""
    lineage = {
        "version": next_version(metadata),
        "parent_version": metadata.version,
        "created": _now(),
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
            if bundle.detector is not None:
                zf.write(staging / DETECTOR_FILE, DETECTOR_FILE, zipfile.ZIP_STORED)
            for name in extras:
                zf.write(staging / name, name, zipfile.ZIP_STORED)
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
            model = _load_model(source / MODEL_FILE)
            detector = _detector(metadata, lambda: (source / DETECTOR_FILE).read_bytes())
        elif source.is_file() and zipfile.is_zipfile(source):
            metadata, model, detector = _load_zip(source)
        elif source.exists():
            raise InvalidBundleError("it is neither a bundle folder nor a .zip file")
        else:
            raise InvalidBundleError("it does not exist")
        check_model(metadata, model)
        check_detector(metadata, detector)
    except InvalidBundleError as error:
        raise InvalidBundleError(f"Model bundle '{source.name}' cannot be used: {error}") from None
    return Bundle(metadata, model, source, detector)


def _detector(metadata: BundleMetadata, read: Any) -> FeatureDetector | None:
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
    with zipfile.ZipFile(source) as zf:
        folder = _bundle_folder_in(zf)
        info = zf.getinfo(posixpath.join(folder, METADATA_FILE))
        if info.file_size > MAX_METADATA_BYTES:
            raise InvalidBundleError(f"{METADATA_FILE} is implausibly large")
        metadata = _read_metadata(zf.read(info))
        try:
            data = zf.read(posixpath.join(folder, MODEL_FILE))
        except KeyError:
            raise InvalidBundleError(f"the zip has no {MODEL_FILE}") from None
        detector = _detector(metadata, lambda: zf.read(posixpath.join(folder, DETECTOR_FILE)))
    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / MODEL_FILE
        model_path.write_bytes(data)
        return metadata, _load_model(model_path), detector


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
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidBundleError(f"{METADATA_FILE} is not valid JSON ({error})") from None
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
        reason = text.strip().splitlines()[0][:300] if text.strip() else type(error).__name__
        raise InvalidBundleError(f"{MODEL_FILE} could not be loaded ({reason})") from None
    if not isinstance(model, keras.Model):
        raise InvalidBundleError(f"{MODEL_FILE} does not hold a Keras model")
    return model


def _keras_config(file: Path) -> Any:
    """The architecture config inside a ``.keras`` file (itself a zip)."""
    try:
        with zipfile.ZipFile(file) as zf:
            return json.loads(zf.read("config.json"))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidBundleError(f"{MODEL_FILE} is not a Keras 3 model file") from None


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
    bundle.model.save(folder / MODEL_FILE)
    text = json.dumps(bundle.metadata.to_dict(), indent=2, ensure_ascii=False)
    (folder / METADATA_FILE).write_text(text + "\n", encoding="utf-8")
    parts = dict(extra_files)
    if bundle.detector is not None:
        parts[DETECTOR_FILE] = bundle.detector.to_bytes()
    for name, content in parts.items():
        (folder / name).write_bytes(content)
    for name in (MODEL_FILE, METADATA_FILE, *parts):
        _fsync(folder / name)


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
    """A fresh hidden folder next to ``target`` (same file system, so renames are atomic)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))


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
    _expect(_is_triple(m.input_shape, _is_int), "input_shape must be three whole numbers (D, H, W)")
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
    _expect(isinstance(m.applicability, dict), "applicability must be a JSON object")
    detector = m.applicability.get("detector") if isinstance(m.applicability, dict) else None
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
    _expect(_is_iso_time(m.created), "created must be an ISO 8601 date and time")
    _expect(isinstance(m.description, str), "description must be text")
    _expect(isinstance(m.model_card, str), "model_card must be text")


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
