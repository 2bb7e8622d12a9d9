"""The network to train: built from scratch or copied from a base, run batch by batch, and
spread over several devices."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import keras
import numpy as np

from napari_scan_classifier.models import (
    ARCHITECTURES,
    Bundle,
)
from napari_scan_classifier.preprocess import mirror_views
from napari_scan_classifier.training.config import BATCHNORM_MOMENTUM
from napari_scan_classifier.training.data import Recipe


@contextlib.contextmanager
def data_parallel(devices: Sequence[str] | None = None) -> Iterator[tuple[str, ...]]:
    """Build, compile and fit inside this to train data-parallel over ``devices`` (default:
    every visible GPU); yields the devices used, ``()`` for one device. Backend-specific."""
    backend = keras.backend.backend()
    if backend not in ("tensorflow", "jax"):  # PyTorch: Keras has no data-parallel distribution
        yield ()
        return
    # list_devices() gives the GPUs where there are some, else the CPUs.
    found = [device for device in keras.distribution.list_devices() if device.startswith("gpu")]
    chosen = tuple(devices) if devices is not None else tuple(found)
    if len(chosen) < 2:
        yield ()
        return
    if backend == "tensorflow":
        import tensorflow as tf

        scope = tf.distribute.MirroredStrategy(list(chosen)).scope()
    else:
        scope = keras.distribution.DataParallel(devices=list(chosen)).scope()
    with scope:
        yield chosen


def initial_model(
    recipe: Recipe, base: Bundle | None, classes: tuple[str, ...], width: int
) -> keras.Model:
    if base is None:
        build = ARCHITECTURES[recipe.architecture]
        model = build((*recipe.input_shape, 1), len(classes), width=width)
    else:
        model = copy_with_classes(base.model, len(base.metadata.classes), len(classes))
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = BATCHNORM_MOMENTUM
    return model


def copy_with_classes(model: keras.Model, n_old: int, n_new: int) -> keras.Model:
    """A copy of ``model`` whose output layers have ``n_new`` units; every weight is copied,
    output layers into their first ``n_old`` units (new units keep their fresh initialisation)."""
    config = model.get_config()
    # Each output is [layer name, node, tensor]: the names are the strings among the leaves.
    heads = {leaf for leaf in keras.tree.flatten(config["output_layers"]) if isinstance(leaf, str)}
    for layer in config["layers"]:
        if layer["config"]["name"] in heads:
            layer["config"]["units"] = n_new
    copy = keras.Model.from_config(config)
    for layer in copy.layers:
        old = model.get_layer(layer.name).get_weights()
        if layer.name in heads and n_new != n_old:
            fresh = layer.get_weights()
            for new_value, old_value in zip(fresh, old, strict=True):
                new_value[..., :n_old] = old_value
            old = fresh
        layer.set_weights(old)
    return copy


def volume_logits(
    model: keras.Model, x: np.ndarray, batch_size: int, *, mirror: bool = False
) -> np.ndarray:
    """Volume logits (N, classes) for arrays (N, D, H, W), calling the model batch by batch:
    no input pipeline (see :func:`.fit.fit_epoch`), and under a strategy each case once (its
    ``predict_on_batch`` gives every replica the whole batch). With ``mirror``, the mean of the
    logits of each case and of its left-right mirror image, as a bundle with
    ``test_time_mirror`` answers (see :mod:`~napari_scan_classifier.inference`)."""
    return np.mean([_logits(model, view, batch_size) for view in mirror_views(x, mirror)], axis=0)


def bundle_logits(bundle: Bundle, x: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """The volume logits ``bundle`` answers with for arrays (N, D, H, W) on its grid."""
    return volume_logits(bundle.model, x, batch_size, mirror=bundle.metadata.test_time_mirror)


def _logits(model: keras.Model, x: np.ndarray, batch_size: int) -> np.ndarray:
    chunks = []
    for start in range(0, len(x), batch_size):
        outputs = model(x[start : start + batch_size, ..., None], training=False)
        logits = outputs["volume"] if isinstance(outputs, dict) else outputs
        chunks.append(keras.ops.convert_to_numpy(logits))
    return np.concatenate(chunks).astype(float)
