"""Where did the model look? Grad-CAM and occlusion maps on the scan's own grid, and a check of
how faithful a map is (a deletion curve).

Every map is computed on the model grid, then resampled onto the *source* volume's grid (the
linear interpolation of :func:`~napari_scan_classifier.preprocess.to_source_grid`), so it
carries the scan's affine and lies exactly over the scan in napari or any other viewer. Values
are float32, normalised to 0..1 (1 at the most salient place), 0 outside the region the model
saw.

- :func:`grad_cam`: gradients of the target class logit w.r.t. the bundle's ``gradcam_layer``
  activations, averaged over space into one weight per channel; the ReLU of the weighted sum of
  the activations is the map. Slice-wise models (``slice_gru``) get one 2D map per slice, each
  with its own channel weights, stacked. The map has the resolution of that layer (1/16 of the
  input for ``cnn3d``'s last block) and is interpolated linearly from there.
- :func:`occlusion`: model-agnostic; the drop of the target probability when a patch of the
  model input is replaced by air (or the mean), averaged over the patches covering each voxel.
- :func:`deletion_curve`: remove the most salient voxels first, in growing fractions, and follow
  the target probability; compare with removing voxels in random order. A faithful map makes the
  probability fall faster: a smaller area under the curve than random. Removed voxels become
  air by default; air inside the body is itself unusual, and a model that flags anything unusual
  keeps its probability whatever goes, so ``baseline="mean"`` (the scan's mean) is the fairer
  test for such models.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import keras
import numpy as np

from napari_scan_classifier.backend import value_and_gradient
from napari_scan_classifier.errors import InvalidBundleError
from napari_scan_classifier.evaluation import softmax
from napari_scan_classifier.inference import Cancel, Progress, Reporter, logits_of, prepare_input
from napari_scan_classifier.models import Bundle
from napari_scan_classifier.preprocess import (
    CT_AIR_HU,
    Box,
    ModelGrid,
    inside_mask,
    normalise,
    resample_to_grid,
    to_source_grid,
)
from napari_scan_classifier.volume import Volume

SLICE_WISE_ARCHITECTURES = ("slice_gru",)  # their Grad-CAM layer is (B, D, h, w, C): per slice
MATRIX_MAP_SIZE = 16  # maps up to this many voxels per axis go to the source by matrix products
Target = str | int | None


@dataclass(frozen=True)
class Faithfulness:
    """Deletion curves: the target probability after removing a fraction of the model-grid
    voxels inside the scan, most salient first (``salient``) or in random order (``random``).

    Areas are over fractions 0..1 (trapezoid rule); lower is a faster fall.
    """

    target_class: str
    fractions: np.ndarray
    salient: np.ndarray
    random: np.ndarray
    auc_salient: float
    auc_random: float

    @property
    def difference(self) -> float:
        """Random area minus salient area: positive when the map beats chance."""
        return self.auc_random - self.auc_salient

    @property
    def ratio(self) -> float:
        """Salient area over random area: below 1 when the map beats chance."""
        return self.auc_salient / self.auc_random if self.auc_random > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_class": self.target_class,
            "fractions": [float(f) for f in self.fractions],
            "salient": [float(p) for p in self.salient],
            "random": [float(p) for p in self.random],
            "auc_salient": self.auc_salient,
            "auc_random": self.auc_random,
            "difference": self.difference,
            "ratio": self.ratio,
        }


@dataclass
class SaliencyMap:
    """A saliency map on the source volume's grid (``values`` has its shape, ``affine`` is its
    affine), for ``target_class``; ``box``: the region the model saw (None: the whole scan);
    ``faithfulness`` when a deletion curve was run."""

    values: np.ndarray
    affine: np.ndarray
    method: str
    target_class: str
    box: Box | None = None
    faithfulness: Faithfulness | None = None


def grad_cam(
    volume: Volume,
    bundle: Bundle,
    target_class: Target = None,
    box: Box | None = None,
    *,
    faithfulness: bool = False,
) -> SaliencyMap:
    """Grad-CAM of ``target_class`` (a name or index; default: the predicted class).

    ``faithfulness=True`` also runs :func:`deletion_curve` (22 more forward passes, air
    baseline; call it directly for other settings).
    """
    x, grid = prepare_input(volume, bundle, box)
    parts = _gradcam_parts(bundle.model, bundle.metadata.gradcam_layer)
    activation = np.asarray(parts.features.predict_on_batch(x[None, ..., None]))
    logits = keras.ops.convert_to_numpy(parts.head(activation))[0]
    k = _target_index(bundle, target_class, logits)
    _, gradient = value_and_gradient(lambda a: keras.ops.sum(parts.head(a)[:, k]), activation)
    per_slice = bundle.metadata.architecture in SLICE_WISE_ARCHITECTURES
    cam = _weighted_activation(activation[0], gradient[0], spatial=(1, 2) if per_slice else None)
    values = _to_source(_normalised(cam), _coarse_grid(grid, cam.shape), volume)
    classes = bundle.metadata.classes
    result = SaliencyMap(_normalised(values), volume.affine.copy(), "grad_cam", classes[k], box)
    if faithfulness:
        result.faithfulness = deletion_curve(volume, bundle, result)
    return result


def occlusion(
    volume: Volume,
    bundle: Bundle,
    target_class: Target = None,
    box: Box | None = None,
    *,
    patch_mm: float = 20.0,
    stride_mm: float | None = None,
    baseline: Literal["air", "mean"] = "air",
    batch_size: int = 8,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    faithfulness: bool = False,
) -> SaliencyMap:
    """Occlusion sensitivity of ``target_class`` (default: the predicted class).

    Cubes of ``patch_mm`` (on the model grid, at least one voxel), every ``stride_mm`` (default
    half a patch), are filled with ``baseline``: ``"air"`` (what the model sees outside the body)
    or ``"mean"`` (the scan's mean input). Costs one forward pass per patch, ``batch_size`` at a
    time; ``progress``/``cancel`` work as in :func:`~napari_scan_classifier.inference.classify`.
    """
    x, grid = prepare_input(volume, bundle, box)
    inside = inside_mask(grid)
    fill = _baseline_value(x, grid, bundle, baseline)
    patch = _voxels(patch_mm, grid)
    stride = _voxels(patch_mm / 2 if stride_mm is None else stride_mm, grid)
    boxes = [b for b in _patch_boxes(grid.shape, patch, stride) if inside[b].any()]
    temperature = bundle.metadata.temperature
    logits = logits_of(bundle.model, x[None])
    k = _target_index(bundle, target_class, logits[0])
    plain = softmax(logits, temperature)[0, k]
    drop, count = np.zeros(grid.shape), np.zeros(grid.shape)
    chunks = [boxes[i : i + batch_size] for i in range(0, len(boxes), batch_size)]
    report = Reporter(len(chunks), progress, cancel, job="occlusion")
    for n, chunk in enumerate(chunks):
        report(f"occluding patches {n * batch_size + 1}-{n * batch_size + len(chunk)}")
        occluded = np.stack([_filled(x, b, fill) for b in chunk])
        probabilities = softmax(logits_of(bundle.model, occluded), temperature)[:, k]
        for b, p in zip(chunk, probabilities, strict=True):
            drop[b] += plain - p
            count[b] += 1
    report.finish()
    sensitivity = np.maximum(drop / np.maximum(count, 1), 0).astype(np.float32)
    values = _to_source(_normalised(sensitivity), grid, volume)
    classes = bundle.metadata.classes
    result = SaliencyMap(_normalised(values), volume.affine.copy(), "occlusion", classes[k], box)
    if faithfulness:
        result.faithfulness = deletion_curve(volume, bundle, result, baseline=baseline)
    return result


def deletion_curve(
    volume: Volume,
    bundle: Bundle,
    saliency: SaliencyMap,
    target_class: Target = None,
    steps: int = 10,
    seed: int = 0,
    *,
    baseline: Literal["air", "mean"] = "air",
    batch_size: int = 8,
) -> Faithfulness:
    """Deletion curves of ``saliency`` for ``target_class`` (default: the map's own class).

    Runs on the model grid (the map is resampled there): voxels inside the scan are set to
    ``baseline`` (as in :func:`occlusion`), most salient first (ties in random order) or all in
    random order, in ``steps`` equal fractions; ``2 * (steps + 1)`` forward passes. The model
    sees the region the map was made for (``saliency.box``).
    """
    if saliency.values.shape != volume.shape:
        raise ValueError(
            f"the map {saliency.values.shape} is not on this scan's {volume.shape} grid"
        )
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    x, grid = prepare_input(volume, bundle, saliency.box)
    k = _class_index(bundle, saliency.target_class if target_class is None else target_class)
    model_map = resample_to_grid(saliency.values, grid, 0.0).ravel()
    rng = np.random.default_rng(seed)
    candidates = rng.permutation(np.flatnonzero(inside_mask(grid)))
    orders = (
        candidates[np.argsort(-model_map[candidates], kind="stable")],  # most salient first
        rng.permutation(candidates),
    )
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = np.round(fractions * candidates.size).astype(int)
    fill = _baseline_value(x, grid, bundle, baseline)
    inputs = [(order, n) for order in orders for n in counts]
    probabilities = np.concatenate(
        [
            softmax(logits_of(bundle.model, batch), bundle.metadata.temperature)[:, k]
            for batch in _deleted_batches(x, inputs, fill, batch_size)
        ]
    )
    salient, random = probabilities[: steps + 1], probabilities[steps + 1 :]
    return Faithfulness(
        target_class=bundle.metadata.classes[k],
        fractions=fractions,
        salient=salient,
        random=random,
        auc_salient=_area(fractions, salient),
        auc_random=_area(fractions, random),
    )


@dataclass(frozen=True)
class _GradCamParts:
    """The model split at the Grad-CAM layer: input -> activation, activation -> logits."""

    features: keras.Model
    head: keras.Model


_PARTS: weakref.WeakKeyDictionary[keras.Model, dict[str, _GradCamParts]] = (
    weakref.WeakKeyDictionary()
)


def _gradcam_parts(model: keras.Model, layer_name: str) -> _GradCamParts:
    """Built once per model and layer; they share the model's layers, hence its weights."""
    cache = _PARTS.setdefault(model, {})
    if layer_name not in cache:
        activation = model.get_layer(layer_name).output
        try:
            head = keras.Model(activation, model.output["volume"])
        except ValueError:
            raise InvalidBundleError(
                f"Grad-CAM needs every path from the scan to the volume logits to pass through "
                f"the layer '{layer_name}' (gradcam_layer); this model has a path around it"
            ) from None
        cache[layer_name] = _GradCamParts(keras.Model(model.input, activation), head)
    return cache[layer_name]


def _weighted_activation(
    activation: np.ndarray, gradient: np.ndarray, spatial: tuple[int, ...] | None
) -> np.ndarray:
    """ReLU of the channel sum of activations weighted by their mean gradient over ``spatial``
    axes (default: all but channels): Grad-CAM's map at the layer's resolution."""
    axes = tuple(range(activation.ndim - 1)) if spatial is None else spatial
    weights = gradient.mean(axis=axes, keepdims=True)
    return np.maximum((activation * weights).sum(axis=-1), 0).astype(np.float32)


def _coarse_grid(grid: ModelGrid, shape: Sequence[int]) -> ModelGrid:
    """The grid of a layer that divides the model grid into ``shape`` cells (voxel k of the
    layer centred on its cell), placed in the source volume like the model grid."""
    factor = np.asarray(grid.shape, dtype=float) / np.asarray(shape, dtype=float)
    model_from_cell = np.diag([*factor, 1.0])
    model_from_cell[:3, 3] = (factor - 1) / 2
    return ModelGrid(
        tuple(int(n) for n in shape),  # type: ignore[arg-type]
        grid.source_from_model @ model_from_cell,
        grid.affine @ model_from_cell,
        grid.source_shape,
    )


def _to_source(values: np.ndarray, grid: ModelGrid, volume: Volume) -> np.ndarray:
    """A map on ``grid`` resampled onto ``volume``'s grid, as
    :func:`~napari_scan_classifier.preprocess.to_source_grid` does (linear, 0 outside the grid).

    A Grad-CAM map has a few voxels per axis; then one interpolation matrix per axis and two
    matrix products write the big output once, where interpolating axis by axis passes over it
    several times: 0.15-0.3 s instead of 0.5-1.3 s for an 8^3 map on a 512x512x300 scan (two
    cores). Larger maps make the products slower than the axis-by-axis path, which they take.
    """
    if max(values.shape) > MATRIX_MAP_SIZE:
        return to_source_grid(values, grid, volume)
    wz, wy, wx = (
        _interpolation_matrix(n, m, s, o)
        for n, m, s, o in zip(volume.shape, grid.shape, grid.scale, grid.offset, strict=True)
    )
    partial = wy @ (values.astype(np.float32) @ wx.T)  # (map z, source y, source x)
    return (wz @ partial.reshape(len(partial), -1)).reshape(volume.shape)


def _interpolation_matrix(n: int, m: int, scale: float, offset: float) -> np.ndarray:
    """(n, m) weights taking m map samples to n source positions along one axis: linear
    between neighbours, clamped at the map's edge voxels, zero beyond the map's extent."""
    at = (np.arange(n) - offset) / scale
    clamped = np.clip(at, 0, m - 1)
    lower = np.minimum(np.floor(clamped).astype(np.intp), max(m - 2, 0))
    upper = np.minimum(lower + 1, m - 1)
    weight = clamped - lower
    matrix = np.zeros((n, m), dtype=np.float32)
    rows = np.arange(n)
    np.add.at(matrix, (rows, lower), 1 - weight)
    np.add.at(matrix, (rows, upper), weight)
    matrix[(at < -0.5 - 1e-6) | (at > m - 0.5 + 1e-6)] = 0
    return matrix


def _normalised(values: np.ndarray) -> np.ndarray:
    """Scaled in place to a maximum of 1 (all zeros stay zeros), as float32."""
    values = values.astype(np.float32, copy=False)
    peak = float(values.max())
    if peak > 0:
        values *= np.float32(1.0 / peak)
    return values


def _target_index(bundle: Bundle, target: Target, logits: np.ndarray) -> int:
    """The class to explain: the given one, or the most probable for ``None``."""
    return int(np.argmax(logits)) if target is None else _class_index(bundle, target)


def _class_index(bundle: Bundle, target: str | int) -> int:
    classes = bundle.metadata.classes
    if isinstance(target, str):
        if target not in classes:
            raise ValueError(f"unknown class {target!r}; the model's classes are {classes}")
        return classes.index(target)
    if not 0 <= int(target) < len(classes):
        raise ValueError(f"class index {target} is out of range for classes {classes}")
    return int(target)


def _baseline_value(x: np.ndarray, grid: ModelGrid, bundle: Bundle, baseline: str) -> float:
    """What removed voxels become: air (-1024 HU through a CT window, else the darkest input)
    or the mean input inside the scan."""
    if baseline == "mean":
        return float(x[inside_mask(grid)].mean())
    if baseline != "air":
        raise ValueError(f"baseline must be 'air' or 'mean', got {baseline!r}")
    intensity = bundle.metadata.intensity
    if intensity["kind"] == "ct_window":
        return float(normalise(np.array([CT_AIR_HU]), intensity)[0])
    return float(x.min())


def _voxels(mm: float, grid: ModelGrid) -> np.ndarray:
    """A length in mm as whole model voxels per axis, at least one, at most the grid."""
    if not mm > 0:
        raise ValueError(f"patch and stride sizes must be positive, got {mm} mm")
    n = np.round(mm / np.asarray(grid.spacing)).astype(int)
    return np.clip(n, 1, grid.shape)


def _patch_boxes(
    shape: Sequence[int], patch: np.ndarray, stride: np.ndarray
) -> list[tuple[slice, ...]]:
    """Patch positions covering every voxel: a regular stride, plus one flush with the far end."""
    starts = []
    for n, p, s in zip(shape, patch, stride, strict=True):
        axis = list(range(0, n - p + 1, s))
        if axis[-1] != n - p:
            axis.append(n - p)
        starts.append(axis)
    return [
        tuple(slice(int(a), int(a + p)) for a, p in zip(corner, patch, strict=True))
        for corner in itertools.product(*starts)
    ]


def _filled(x: np.ndarray, box: tuple[slice, ...], value: float) -> np.ndarray:
    out = x.copy()
    out[box] = value
    return out


def _deleted_batches(
    x: np.ndarray, inputs: list[tuple[np.ndarray, int]], fill: float, batch_size: int
) -> Iterator[np.ndarray]:
    """Inputs with the first ``n`` voxels of an order set to ``fill``, ``batch_size`` at a time."""
    for start in range(0, len(inputs), batch_size):
        batch = np.repeat(x[None], len(inputs[start : start + batch_size]), axis=0)
        for b, (order, n) in enumerate(inputs[start : start + batch_size]):
            batch[b].reshape(-1)[order[:n]] = fill
        yield batch


def _area(fractions: np.ndarray, values: np.ndarray) -> float:
    return float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(fractions)))
