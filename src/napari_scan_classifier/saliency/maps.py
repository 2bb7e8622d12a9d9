"""Grad-CAM and occlusion: maps from a layer's activations, and from covering parts of the scan.

- :func:`grad_cam`: gradients of the target class logit w.r.t. a layer's activations (the
  bundle's ``gradcam_layer`` unless another is named), averaged over space into one weight per
  channel; the ReLU of the weighted sum of the activations is the map (for a bundle with
  ``test_time_mirror``, the mean of the scan's map and its mirror image's, mirrored back).
  Slice-wise models (``slice_gru``) get one 2D map per slice, each with its own channel weights,
  stacked. The map has the resolution of that layer (1/16 of the input for ``cnn3d``'s last
  block) and is interpolated linearly from there.
- :func:`occlusion`: model-agnostic; the drop of the target probability when a patch of the
  model input is replaced by air (or the mean), averaged over the patches covering each voxel.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import keras
import numpy as np

from napari_scan_classifier.backend import GradientFn, compiled_gradient
from napari_scan_classifier.errors import InvalidBundleError
from napari_scan_classifier.inference import Cancel, Progress, Reporter, logits_of, prepare_input
from napari_scan_classifier.models import Bundle
from napari_scan_classifier.preprocess import (
    Box,
    ModelGrid,
    inside_mask,
    mirror_left_right,
    mirror_views,
)
from napari_scan_classifier.saliency.core import (
    SaliencyMap,
    Target,
    baseline_value,
    coarse_grid,
    normalised,
    target_index,
    to_source,
)
from napari_scan_classifier.saliency.faithfulness import measure_faithfulness
from napari_scan_classifier.volume import Volume

SLICE_WISE_ARCHITECTURES = ("slice_gru",)  # their Grad-CAM layer is (B, D, h, w, C): per slice


def grad_cam(
    volume: Volume,
    bundle: Bundle,
    target_class: Target = None,
    box: Box | None = None,
    *,
    layer: str | None = None,
    faithfulness: bool = False,
) -> SaliencyMap:
    """Grad-CAM of ``target_class`` (a name or index; default: the predicted class) on ``layer``
    (default: the bundle's ``gradcam_layer``).

    ``faithfulness=True`` also runs :func:`~.faithfulness.measure_faithfulness`.
    """
    layer = bundle.metadata.gradcam_layer if layer is None else layer
    x, grid = prepare_input(volume, bundle, box)
    parts = _gradcam_parts(bundle.model, layer)
    mirror = bundle.metadata.test_time_mirror
    views = np.concatenate(mirror_views(x[None], mirror))
    activation = np.asarray(parts.features.predict_on_batch(views[..., None]))
    logits = keras.ops.convert_to_numpy(parts.head(activation)).mean(axis=0)
    k = target_index(bundle, target_class, logits)
    _, gradient = parts.gradient(activation, np.eye(len(logits), dtype=np.float32)[k])
    per_slice = bundle.metadata.architecture in SLICE_WISE_ARCHITECTURES
    spatial = (1, 2) if per_slice else None
    cams = [_weighted_activation(a, g, spatial) for a, g in zip(activation, gradient, strict=True)]
    if mirror:  # the mirror image's map, back on the scan: the answer averages both views
        cams[1] = mirror_left_right(cams[1][None])[0]
    cam = np.mean(cams, axis=0)
    values = to_source(normalised(cam), coarse_grid(grid, cam.shape), volume)
    classes = bundle.metadata.classes
    result = SaliencyMap(
        normalised(values), volume.affine.copy(), "grad_cam", classes[k], box, layer=layer
    )
    if faithfulness:
        result.faithfulness = measure_faithfulness(volume, bundle, result)
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
    fill = baseline_value(x, grid, bundle, baseline)
    patch = _voxels(patch_mm, grid)
    stride = _voxels(patch_mm / 2 if stride_mm is None else stride_mm, grid)
    boxes = [b for b in _patch_boxes(grid.shape, patch, stride) if inside[b].any()]
    logits = logits_of(bundle, x[None])
    k = target_index(bundle, target_class, logits[0])
    plain = bundle.metadata.probabilities(logits)[0, k]
    drop, count = np.zeros(grid.shape), np.zeros(grid.shape)
    chunks = [boxes[i : i + batch_size] for i in range(0, len(boxes), batch_size)]
    report = Reporter(len(chunks), progress, cancel, job="occlusion")
    for n, chunk in enumerate(chunks):
        report(f"occluding patches {n * batch_size + 1}-{n * batch_size + len(chunk)}")
        occluded = np.stack([_filled(x, b, fill) for b in chunk])
        probabilities = bundle.metadata.probabilities(logits_of(bundle, occluded))[:, k]
        for b, p in zip(chunk, probabilities, strict=True):
            drop[b] += plain - p
            count[b] += 1
    report.finish()
    sensitivity = np.maximum(drop / np.maximum(count, 1), 0).astype(np.float32)
    values = to_source(normalised(sensitivity), grid, volume)
    classes = bundle.metadata.classes
    result = SaliencyMap(normalised(values), volume.affine.copy(), "occlusion", classes[k], box)
    if faithfulness:
        result.faithfulness = measure_faithfulness(volume, bundle, result)
    return result


def activation_layers(bundle: Bundle) -> list[str]:
    """The layers Grad-CAM can use: every convolution block's ReLU (5D activations) that all
    paths to the logits pass through (a skip connection goes around the layers it spans), input
    side first, the bundle's ``gradcam_layer`` among them."""
    names = [
        layer.name
        for layer in bundle.model.layers
        if isinstance(layer, keras.layers.Activation)
        and len(layer.output.shape) == 5
        and _splits_the_model(bundle.model, layer.name)
    ]
    if bundle.metadata.gradcam_layer not in names:
        names.append(bundle.metadata.gradcam_layer)
    return names


@dataclass(frozen=True)
class _GradCamParts:
    """The model split at the Grad-CAM layer: input -> activation, activation -> logits, and
    the compiled gradient of the head's weighted logits (see ``gradients.py`` for why compiled)."""

    features: keras.Model
    head: keras.Model
    gradient: GradientFn


_PARTS: weakref.WeakKeyDictionary[keras.Model, dict[str, _GradCamParts]] = (
    weakref.WeakKeyDictionary()
)


def _splits_the_model(model: keras.Model, layer_name: str) -> bool:
    """Whether the model splits at the layer into the two parts Grad-CAM needs (a path around it
    leaves the head with an input it cannot be built from)."""
    try:
        _gradcam_parts(model, layer_name)
    except InvalidBundleError:
        return False
    return True


def _gradcam_parts(model: keras.Model, layer_name: str) -> _GradCamParts:
    """Built once per model and layer; they share the model's layers, hence its weights."""
    cache = _PARTS.setdefault(model, {})
    if layer_name not in cache:
        try:
            activation = model.get_layer(layer_name).output
        except ValueError:
            raise InvalidBundleError(f"the model has no layer '{layer_name}'") from None
        try:
            head = keras.Model(activation, model.output["volume"])
        except ValueError:
            raise InvalidBundleError(
                f"Grad-CAM needs every path from the scan to the volume logits to pass through "
                f"the layer '{layer_name}'; this model has a path around it"
            ) from None
        gradient = compiled_gradient(lambda a, weights: keras.ops.sum(head(a) * weights))
        cache[layer_name] = _GradCamParts(keras.Model(model.input, activation), head, gradient)
    return cache[layer_name]


def _weighted_activation(
    activation: np.ndarray, gradient: np.ndarray, spatial: tuple[int, ...] | None
) -> np.ndarray:
    """ReLU of the channel sum of activations weighted by their mean gradient over ``spatial``
    axes (default: all but channels): Grad-CAM's map at the layer's resolution."""
    axes = tuple(range(activation.ndim - 1)) if spatial is None else spatial
    weights = gradient.mean(axis=axes, keepdims=True)
    return np.maximum((activation * weights).sum(axis=-1), 0).astype(np.float32)


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
