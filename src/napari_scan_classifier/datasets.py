"""Training and evaluation data: a case library folder or a MedMNIST-style ``.npz``, as arrays on a
model's grid with integer labels and class names.

Both sources end up as :class:`LabelledData`: named splits of ``(N, D, H, W)`` float32 arrays
already on the model grid and in the model's intensity range, so training and evaluation never
touch files again.

- A **case library** (see :mod:`napari_scan_classifier.cases`) is one split, ``"all"``; every
  case goes through :func:`~napari_scan_classifier.preprocess.prepare` with the model's grid and
  intensity recipe, exactly as a scan classified in the viewer does.
- A **MedMNIST-style npz** holds any of ``train_*``, ``val_*`` and ``test_*`` (``*_images``,
  ``*_labels``; training needs train, evaluating one test alone will do): uint8 volumes
  ``N x D x H x W`` and labels ``N x 1``. They are already cropped and normalised, so intensities
  are only scaled to [0, 1] (integers by their type's maximum) and the model's intensity recipe is
  *not* applied; volumes are stretched onto the model grid when their shape differs. Label index
  ``k`` is named by the file's own ``class_names`` array when it has one, else by the
  ``class_names`` the caller gives (the CLI's ``--classes``), else ``"k"``. Never by the file's
  name: a renamed file must not change its labels. :data:`MEDMNIST_CLASSES` lists the MedMNIST 3D
  sets' names to pass.

Each case also records which of its array axes runs superior-inferior and which left-right (from
its affine; npz volumes are taken as axial stacks), so augmentation flips left-right only and
rotates in the axial plane whatever the acquisition orientation.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_scan_classifier import limits
from napari_scan_classifier.applicability import summarise
from napari_scan_classifier.errors import CancelledError, TrainingError
from napari_scan_classifier.preprocess import model_grid, prepare, resample_to_grid
from napari_scan_classifier.privacy import THE_INPUT, strip_paths
from napari_scan_classifier.volume import Volume

# Called with (done, total) as cases are read and resampled.
LoadProgress = Callable[[int, int], None]

AXIAL_AXES = (0, 2)  # (superior-inferior, left-right) index axes of an axial (z, y, x) stack
ALL = "all"
# How messages name the source, never by its name (folders are often named after patients); a
# command line numbers it (``<input 1> (training data): ...``).
_SOURCE = f"{THE_INPUT} (training data)"
NPZ_SPLITS = ("train", "val", "test")
# Label names of the MedMNIST 3D data sets (medmnist/info.py), for callers to pass by data set.
MEDMNIST_CLASSES: dict[str, tuple[str, ...]] = {
    "adrenalmnist3d": ("normal", "hyperplasia"),
    "nodulemnist3d": ("benign", "malignant"),
    "vesselmnist3d": ("vessel", "aneurysm"),
    "synapsemnist3d": ("inhibitory synapse", "excitatory synapse"),
    "fracturemnist3d": (
        "buckle rib fracture",
        "nondisplaced rib fracture",
        "displaced rib fracture",
    ),
    "organmnist3d": (
        "liver",
        "kidney-right",
        "kidney-left",
        "femur-right",
        "femur-left",
        "bladder",
        "heart",
        "lung-right",
        "lung-left",
        "spleen",
        "pancreas",
    ),
}
# Labels that name the absence of a finding: they come first, so binary metrics call the other
# class positive (evaluation takes the second class as positive).
NEGATIVE_LABELS = ("normal", "negative", "healthy", "benign", "control", "no finding", "absent")


@dataclass(frozen=True)
class Split:
    """Cases on the model grid: ``x`` (N, D, H, W) float32, ``y`` (N,) indices into the class
    names, ``axes`` (N, 2): each case's superior-inferior and left-right array axes."""

    x: np.ndarray
    y: np.ndarray
    axes: np.ndarray

    def __post_init__(self) -> None:
        if not (len(self.x) == len(self.y) == len(self.axes)):
            raise ValueError("x, y and axes must have one entry per case")

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, indices: np.ndarray) -> Split:
        return Split(self.x[indices], self.y[indices], self.axes[indices])

    def counts(self, class_names: Sequence[str]) -> dict[str, int]:
        """Cases per class name (zeros included)."""
        numbers = np.bincount(self.y, minlength=len(class_names))
        return {name: int(n) for name, n in zip(class_names, numbers, strict=True)}


@dataclass(frozen=True)
class LabelledData:
    """Named splits sharing one list of class names; ``description`` says where they came from
    without naming paths; ``modalities`` lists the cases' modalities where known;
    ``summaries`` holds every case's :func:`~.applicability.summarise` where the scans were
    read (not for an npz), for the applicability check's ranges."""

    class_names: tuple[str, ...]
    splits: Mapping[str, Split]
    description: str
    modalities: tuple[str, ...] = ()
    summaries: tuple[dict[str, Any], ...] = ()

    @property
    def shape(self) -> tuple[int, int, int]:
        """The grid (D, H, W) every split is on."""
        return tuple(next(iter(self.splits.values())).x.shape[1:])  # type: ignore[return-value]

    def split(self, name: str | None = None) -> Split:
        """A split by name; ``None``: test if present, else val, else everything."""
        if name is None:
            name = next((s for s in ("test", "val", ALL) if s in self.splits), None)
        if name not in self.splits:
            raise TrainingError(
                f"The data ({self.description}) has no split {name!r}; "
                f"it has {', '.join(sorted(self.splits))}"
            )
        return self.splits[name]


def n_cases(n: int) -> str:
    """``"1 case"``, ``"3 cases"``: counts in messages read as English."""
    return f"{n} case" if n == 1 else f"{n} cases"


def load_source(
    source: str | Path,
    shape: Sequence[int],
    spacing_mm: Sequence[float] | None,
    intensity: Mapping[str, Any],
    *,
    progress: LoadProgress | None = None,
    cancel: Callable[[], bool] | None = None,
    class_names: Sequence[str] | None = None,
) -> LabelledData:
    """Load a case library folder or an ``.npz`` onto the model grid ``shape`` (see module doc;
    ``class_names`` name an npz's label indices and do not apply to a library)."""
    path = Path(source)
    if not path.exists():
        raise TrainingError(f"{_SOURCE}: no such file or folder")
    if path.is_dir():
        if class_names is not None:
            raise TrainingError(
                "Class names (--classes) name an npz file's label indices; the cases of a case "
                "library carry their own labels"
            )
        return load_case_library(
            path, shape, spacing_mm, intensity, progress=progress, cancel=cancel
        )
    return load_npz(path, shape, class_names=class_names)


def load_npz(
    path: str | Path,
    shape: Sequence[int] | None = None,
    *,
    class_names: Sequence[str] | None = None,
) -> LabelledData:
    """A MedMNIST-style npz as splits scaled to [0, 1], resized to ``shape`` if given; label
    indices named as the module doc says."""
    path = Path(path)
    arrays = _read_npz(path)
    splits: dict[str, Split] = {}
    n_classes = 0
    for name in NPZ_SPLITS:
        if f"{name}_images" not in arrays:
            continue
        x = _npz_images(arrays, name, shape)
        y = _npz_labels(arrays, name, len(x))
        splits[name] = Split(x, y, np.tile(AXIAL_AXES, (len(y), 1)))
        n_classes = max(n_classes, int(y.max()) + 1)
    if not splits:
        raise TrainingError(
            f"{_SOURCE} has none of train_images, val_images, test_images: not a MedMNIST-style npz"
        )
    names = _npz_class_names(arrays, n_classes, class_names)
    counts = ", ".join(f"{len(split.y)} {name}" for name, split in splits.items())
    return LabelledData(names, splits, f"npz file of {counts} volumes")


def load_case_library(
    root: str | Path,
    shape: Sequence[int],
    spacing_mm: Sequence[float] | None,
    intensity: Mapping[str, Any],
    *,
    progress: LoadProgress | None = None,
    cancel: Callable[[], bool] | None = None,
) -> LabelledData:
    """Every readable case of the library at ``root``, prepared for the model, one split."""
    from napari_scan_classifier.cases import CaseLibrary

    root = Path(root)
    if not root.is_dir():
        raise TrainingError(f"{_SOURCE} is not a case library folder")
    library = CaseLibrary(root)
    records = library.list()
    if not records:
        raise TrainingError(f"{_SOURCE} is a case library that holds no readable cases")
    volumes: list[np.ndarray] = []
    summaries: list[dict[str, Any]] = []
    axes: list[tuple[int, int]] = []
    for done, record in enumerate(records, start=1):
        if cancel is not None and cancel():
            raise CancelledError("Loading the training cases was cancelled")
        volume, _mask = library.load(record.case_id)
        volumes.append(_prepare(volume, shape, spacing_mm, intensity))
        summaries.append(summarise(volume))
        axes.append(anatomical_axes(volume.affine))
        if progress is not None:
            progress(done, len(records))
    labels = [record.label for record in records]
    names = class_order(labels)
    split = Split(_stack(volumes, shape), _indices(labels, names), np.array(axes, dtype=int))
    modalities = tuple(sorted({record.modality for record in records}))
    description = f"case library ({n_cases(len(records))})"
    return LabelledData(names, {ALL: split}, description, modalities, tuple(summaries))


def from_volumes(
    cases: Iterable[tuple[Volume, str]],
    shape: Sequence[int],
    spacing_mm: Sequence[float] | None,
    intensity: Mapping[str, Any],
    *,
    class_names: Sequence[str] | None = None,
    description: str = "volumes in memory",
) -> LabelledData:
    """(volume, label) pairs (e.g. phantoms, generated lazily) prepared like library cases, as
    one split; only the prepared arrays are kept."""
    prepared, axes, labels, modalities, summaries = [], [], [], set(), []
    for volume, label in cases:
        prepared.append(_prepare(volume, shape, spacing_mm, intensity))
        summaries.append(summarise(volume))
        axes.append(anatomical_axes(volume.affine))
        labels.append(label)
        modalities.add(volume.modality)
    names = tuple(class_names) if class_names is not None else class_order(labels)
    split = Split(_stack(prepared, shape), _indices(labels, names), np.array(axes, dtype=int))
    return LabelledData(
        names, {ALL: split}, description, tuple(sorted(modalities)), tuple(summaries)
    )


def class_order(labels: Iterable[str]) -> tuple[str, ...]:
    """Class names for a set of labels: normal-like names first, the rest alphabetically."""
    unique = sorted(set(labels))
    return tuple(sorted(unique, key=lambda name: name.lower() not in NEGATIVE_LABELS))


def anatomical_axes(affine: np.ndarray) -> tuple[int, int]:
    """The array axes closest to the world superior-inferior and left-right axes."""
    nearest = np.argmax(np.abs(np.asarray(affine, dtype=float)[:3, :3]), axis=1)
    si_axis, lr_axis = int(nearest[0]), int(nearest[2])
    return (si_axis, lr_axis) if si_axis != lr_axis else AXIAL_AXES


def _prepare(
    volume: Volume,
    shape: Sequence[int],
    spacing_mm: Sequence[float] | None,
    intensity: Mapping[str, Any],
) -> np.ndarray:
    array, _grid = prepare(volume, shape, spacing_mm, intensity)
    return array


def _stack(arrays: list[np.ndarray], shape: Sequence[int]) -> np.ndarray:
    if not arrays:
        return np.zeros((0, *shape), dtype=np.float32)
    return np.stack(arrays).astype(np.float32, copy=False)


def _indices(labels: Sequence[str], names: Sequence[str]) -> np.ndarray:
    lookup = {name: index for index, name in enumerate(names)}
    return np.array([lookup[label] for label in labels], dtype=int)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    special = limits.special_file_reason(path)
    if special is not None:  # reading a named pipe would block forever
        raise TrainingError(f"{_SOURCE} cannot be read: {special}")
    _check_npz_size(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        text = strip_paths(str(error), path)
        reason = text.splitlines()[0][:200] if text else type(error).__name__
        raise TrainingError(
            f"{_SOURCE} is neither a case library folder nor a readable .npz file ({reason})"
        ) from None


def _check_npz_size(path: Path) -> None:
    """Refuse, before loading, an .npz whose members are zip bombs or whose arrays declare more
    than the memory budget (an .npy header may declare any shape)."""
    if not zipfile.is_zipfile(path):
        return  # np.load reports what it is
    declared = 0
    with limits.open_zip(path, _SOURCE, TrainingError) as archive:
        for info in archive.infolist():
            what = f"{_SOURCE}: {info.filename}"
            # No expansion-ratio test: volumes of mostly background compress far more than
            # 100-fold (AdrenalMNIST3D 64^3: 222-fold), and what an array may expand to is
            # bounded anyway by the budget checks of its declared size and of the member's.
            limits.check_member(info, what, TrainingError, limits.memory_budget(), max_ratio=None)
            if info.filename.endswith(".npy"):
                declared += _npy_bytes(archive, info, what)
    limits.check_memory(declared, _SOURCE, TrainingError)


def _npy_bytes(archive: zipfile.ZipFile, info: zipfile.ZipInfo, what: str) -> int:
    """The bytes an .npy member's header says its array takes."""
    try:
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(member)
    except (*limits.ZIP_ERRORS, SyntaxError) as error:
        raise TrainingError(f"{what} is not a readable array ({type(error).__name__})") from None
    return math.prod(shape) * dtype.itemsize


def _npz_images(
    arrays: Mapping[str, np.ndarray], split: str, shape: Sequence[int] | None
) -> np.ndarray:
    images = arrays[f"{split}_images"]
    if images.ndim == 5 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 4 or len(images) == 0:
        raise TrainingError(
            f"{_SOURCE}: {split}_images has shape {images.shape}; expected 3D volumes "
            "N x D x H x W (a 2D MedMNIST set cannot train a 3D model)"
        )
    if np.issubdtype(images.dtype, np.integer):
        gain = np.float32(1.0 / np.iinfo(images.dtype).max)
    elif np.issubdtype(images.dtype, np.floating):
        gain = np.float32(1.0)
    else:
        raise TrainingError(f"{_SOURCE}: {split}_images of type {images.dtype} are not voxels")
    if shape is None or tuple(shape) == images.shape[1:]:
        return images.astype(np.float32) * gain
    # One volume at a time: a whole 64^3 split in float32 would cost several times the result.
    out = np.empty((len(images), *shape), dtype=np.float32)
    for index, volume in enumerate(images):
        out[index] = _resize(volume.astype(np.float32) * gain, shape)
    return out


def _resize(volume: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Stretch one volume onto ``shape`` with the same resampling a scan gets."""
    grid = model_grid(Volume(volume, np.eye(4)), shape)
    return resample_to_grid(volume, grid, cval=0.0)


def _npz_labels(arrays: Mapping[str, np.ndarray], split: str, n: int) -> np.ndarray:
    key = f"{split}_labels"
    if key not in arrays:
        raise TrainingError(f"{_SOURCE} has {split}_images but no {key}")
    labels = np.asarray(arrays[key])
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise TrainingError(
            f"{_SOURCE}: {key} must hold one class index (0, 1, ...) per volume, "
            f"got shape {labels.shape} of type {labels.dtype}"
        )
    return labels.astype(int)


def _npz_class_names(
    arrays: Mapping[str, np.ndarray],
    n_classes: int,
    given: Sequence[str] | None,
) -> tuple[str, ...]:
    """The file's own ``class_names``, else ``given``, else the indices as text."""
    own = None
    if "class_names" in arrays:
        stored = np.asarray(arrays["class_names"])
        if stored.ndim != 1 or stored.dtype.kind not in "US":
            raise TrainingError(f"{_SOURCE}: class_names must be a list of texts")
        own = tuple(str(n.decode() if isinstance(n, bytes) else n) for n in stored)
    if own is not None and given is not None and tuple(given) != own:
        raise TrainingError(
            f"{_SOURCE} names its classes {list(own)}, not {list(given)}; drop --classes "
            "or give the file's own names"
        )
    names = own if own is not None else None if given is None else tuple(given)
    if names is None:
        return tuple(str(index) for index in range(max(n_classes, 2)))
    if len(names) < max(n_classes, 2) or len(set(names)) != len(names):
        raise TrainingError(
            f"{_SOURCE} has labels 0 to {n_classes - 1} but {len(names)} class names "
            f"{list(names)}: give one distinct name per label index, in index order"
        )
    return tuple(names)


__all__ = [
    "ALL",
    "LabelledData",
    "Split",
    "anatomical_axes",
    "class_order",
    "from_volumes",
    "load_case_library",
    "load_npz",
    "load_source",
]
