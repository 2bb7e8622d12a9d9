"""Network architectures, written with Keras 3 layers only so a bundle runs on any backend.

Every builder returns a functional ``keras.Model`` on input ``(D, H, W, 1)`` whose output is a dict
of *logits* (temperature calibration happens outside the model):

- ``"volume"``: ``(B, n_classes)``, always present;
- ``"slices"``: ``(B, D, n_classes)``, for architectures that score each slice.

The activation Grad-CAM should explain is named :data:`GRADCAM_LAYER`.

Monte Carlo dropout
-------------------
``model(x, training=True)`` samples dropout masks, but it also switches every BatchNormalization
layer to the statistics of the batch at hand, which for one scan at inference time are not the
statistics the model was trained with. The clean path is therefore :func:`with_mc_dropout`: it
rebuilds the model from its config with every :class:`MCDropout` layer made ``always_on`` and
copies the weights, so ``twin(x)`` samples dropout while BatchNorm keeps its moving statistics.
The flag is a constructor argument, not a mutable switch, so it is baked in correctly when a
backend traces the model into a graph, and it survives saving.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
from keras import layers

GRADCAM_LAYER = "gradcam_target"
PIXEL_LOGITS_LAYER = "pixel_logits"  # slice_unet_gru's per-pixel class logits, (B, D, H, W, n)
PIXEL_PEAK_LAYER = "pixel_peak"  # each slice's highest pixel logit per class, (B, D, n)
SERIALIZATION_PACKAGE = "napari_scan_classifier"


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class MCDropout(layers.Dropout):
    """Dropout that can be left on at inference (``always_on=True``) for Monte Carlo sampling."""

    def __init__(self, rate: float, always_on: bool = False, **kwargs: Any) -> None:
        super().__init__(rate, **kwargs)
        self.always_on = bool(always_on)

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        return super().call(inputs, training=True if self.always_on else training)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "always_on": self.always_on}


def build_cnn3d(
    input_shape: Sequence[int],
    n_classes: int,
    *,
    width: int = 16,
    dropout: float = 0.3,
) -> keras.Model:
    """A classic 3D CNN: Conv-BN-ReLU blocks with max pooling, global average pooling, dropout,
    and a dense head.

    A stride-2 first convolution followed by pooling brings a 128^3 input to 32^3 before the
    wider layers run, which keeps a CPU forward pass fast; the widths double per block
    (``width``, 2x, 4x, 8x): 0.29 M parameters (1.2 MB saved) at ``width=16``, and about
    0.2 s per 128^3 scan on two CPU cores.
    """
    inputs = keras.Input(shape=tuple(input_shape), name="scan")
    x = _conv_bn_relu(layers.Conv3D, inputs, width, strides=2, name="stem")
    x = layers.MaxPool3D(2, padding="same", name="stem_pool")(x)
    for i, multiple in enumerate((2, 4)):
        x = _conv_bn_relu(layers.Conv3D, x, width * multiple, name=f"block{i + 1}")
        x = layers.MaxPool3D(2, padding="same", name=f"block{i + 1}_pool")(x)
    x = _conv_bn_relu(layers.Conv3D, x, width * 8, name="block3", activation_name=GRADCAM_LAYER)
    x = layers.GlobalAveragePooling3D(name="pool")(x)
    x = MCDropout(dropout, name="dropout")(x)
    logits = layers.Dense(n_classes, name="volume_logits")(x)
    return keras.Model(inputs, {"volume": logits}, name="cnn3d")


def build_cnn3d_mil(
    input_shape: Sequence[int],
    n_classes: int,
    *,
    width: int = 16,
    dropout: float = 0.3,
) -> keras.Model:
    """A 3D CNN for small findings: evidence scored cell by cell on a map a quarter of the grid
    (a 16^3 map of 12 mm cells for a 190 mm scan on 64^3), pooled by its maximum
    (multiple-instance pooling).

    ``cnn3d`` halves the grid four times and averages what is left, so a lesion of a few voxels
    weighs little against the whole scan; here one cell that looks like a lesion is enough. A
    1x1x1 convolution (``"evidence"``, ``4 * width`` channels, linear) scores every cell of the
    last activation, :data:`GRADCAM_LAYER` (``(B, D/4, H/4, W/4, 4 * width)``), before the
    maximum is taken, so a score can weigh features against each other within one cell.
    """
    inputs = keras.Input(shape=tuple(input_shape), name="scan")
    x = _conv_bn_relu(layers.Conv3D, inputs, width, strides=2, name="stem")
    x = _conv_bn_relu(layers.Conv3D, x, width * 2, name="block1")
    x = layers.MaxPool3D(2, padding="same", name="block1_pool")(x)
    x = _conv_bn_relu(layers.Conv3D, x, width * 4, name="block2")
    x = _conv_bn_relu(layers.Conv3D, x, width * 4, name="block3", activation_name=GRADCAM_LAYER)
    x = layers.Conv3D(width * 4, 1, name="evidence")(x)
    x = layers.GlobalMaxPooling3D(name="pool")(x)
    x = MCDropout(dropout, name="dropout")(x)
    logits = layers.Dense(n_classes, name="volume_logits")(x)
    return keras.Model(inputs, {"volume": logits}, name="cnn3d_mil")


def build_slice_gru(
    input_shape: Sequence[int],
    n_classes: int,
    *,
    width: int = 16,
    gru_units: int = 32,
    dropout: float = 0.3,
) -> keras.Model:
    """A 2D CNN encoder shared by every slice, then a bidirectional GRU along the slices.

    Slice-wise layers are wrapped in ``TimeDistributed`` (the slice axis plays time), so the
    encoder's last activation, :data:`GRADCAM_LAYER`, is ``(B, D, h, w, C)``: one Grad-CAM map per
    slice. Each slice is summarised by the mean *and* the maximum of that activation: the mean
    alone dilutes a focal finding over the whole slice (on brain MR phantoms, where a lesion
    fills a few percent of a slice, a mean-only encoder stayed at chance for 6 epochs of 150
    cases). The GRU outputs give per-slice logits; attention weights over slices
    (``"slice_attention"`` layer, softmax over D) pool them into the volume logits, and say which
    slices drove the decision.
    """
    inputs = keras.Input(shape=tuple(input_shape), name="scan")
    x = _conv_bn_relu(_per_slice_conv2d, inputs, width, strides=2, name="enc1")
    x = layers.TimeDistributed(layers.MaxPool2D(2, padding="same"), name="enc1_pool")(x)
    x = _conv_bn_relu(_per_slice_conv2d, x, width * 2, name="enc2")
    x = layers.TimeDistributed(layers.MaxPool2D(2, padding="same"), name="enc2_pool")(x)
    x = _conv_bn_relu(_per_slice_conv2d, x, width * 4, name="enc3", activation_name=GRADCAM_LAYER)
    outputs = _across_slices([_mean_and_peak(x)], n_classes, gru_units, dropout)
    return keras.Model(inputs, outputs, name="slice_gru")


def build_slice_unet_gru(
    input_shape: Sequence[int],
    n_classes: int,
    *,
    width: int = 16,
    gru_units: int = 32,
    dropout: float = 0.3,
) -> keras.Model:
    """``slice_gru`` whose slice encoder is a small U-Net ending in a per-pixel lesion logit per
    class (:data:`PIXEL_LOGITS_LAYER`), at the input's resolution, so a training stage can
    supervise every pixel with a lesion mask.

    Why: on T1-like brain MR phantoms, infarcts barely differ from the white matter around them;
    ``slice_gru``'s encoder (a stride-2 first convolution, pooled at once) left them at chance
    even with slice labels, while a U-Net trained on the lesion mask pixel by pixel told single
    slices through them from normal ones with AUC 0.95-0.97. Two convolutions at full resolution
    and two halvings go down; upsampling with skip connections comes back to full resolution,
    the :data:`GRADCAM_LAYER` (every path to the logits passes through it). Each slice is then
    summarised by the mean and maximum of that activation and the maximum of each class's pixel
    logit, and the bidirectional GRU and slice attention of ``slice_gru`` follow.
    """
    inputs = keras.Input(shape=tuple(input_shape), name="scan")
    full = _conv_bn_relu(_in_plane_conv, inputs, width, name="enc0")
    full = _conv_bn_relu(_in_plane_conv, full, width, name="enc0b")
    half = _conv_bn_relu(_in_plane_conv, _in_plane_pool(full, "enc0_pool"), 2 * width, name="enc1")
    quarter = _conv_bn_relu(
        _in_plane_conv, _in_plane_pool(half, "enc1_pool"), 4 * width, name="enc2"
    )
    x = _up_and_join(quarter, half, 2 * width, name="dec1")
    x = _up_and_join(x, full, width, name="dec0", activation_name=GRADCAM_LAYER)
    pixels = layers.Conv3D(n_classes, 1, name=PIXEL_LOGITS_LAYER)(x)
    peak = layers.TimeDistributed(layers.GlobalMaxPooling2D(), name=PIXEL_PEAK_LAYER)(pixels)
    outputs = _across_slices([_mean_and_peak(x), peak], n_classes, gru_units, dropout)
    return keras.Model(inputs, outputs, name="slice_unet_gru")


ARCHITECTURES: dict[str, Callable[..., keras.Model]] = {
    "cnn3d": build_cnn3d,
    "cnn3d_mil": build_cnn3d_mil,
    "slice_gru": build_slice_gru,
    "slice_unet_gru": build_slice_unet_gru,
}


def with_mc_dropout(model: keras.Model) -> keras.Model:
    """A twin of ``model`` (same weights) whose :class:`MCDropout` layers are always on.

    Calling the twin without ``training`` samples dropout masks while BatchNormalization uses its
    moving statistics: the Monte Carlo path that does not depend on the batch.
    """
    config = model.get_config()
    for layer in config["layers"]:
        if layer.get("registered_name") == f"{SERIALIZATION_PACKAGE}>MCDropout":
            layer["config"]["always_on"] = True
    twin = model.__class__.from_config(config)
    twin.set_weights(model.get_weights())
    return twin


def _per_slice_conv2d(filters: int, kernel_size: int, *, name: str, **kwargs: Any) -> Any:
    return layers.TimeDistributed(layers.Conv2D(filters, kernel_size, **kwargs), name=name)


def _in_plane_conv(filters: int, kernel_size: int, *, name: str, **kwargs: Any) -> Any:
    """A 2D convolution of every slice as one 3D convolution one slice deep: ``TimeDistributed``
    runs its layer slice after slice, 18 times slower to train at full resolution."""
    return layers.Conv3D(filters, (1, kernel_size, kernel_size), name=name, **kwargs)


def _in_plane_pool(x: Any, name: str) -> Any:
    return layers.MaxPool3D((1, 2, 2), padding="same", name=name)(x)


def _up_and_join(
    x: Any, skip: Any, filters: int, *, name: str, activation_name: str | None = None
) -> Any:
    """Upsample each slice to ``skip``'s size, join the two, one convolution block."""
    x = layers.UpSampling3D((1, 2, 2), name=f"{name}_up")(x)
    x = layers.Concatenate(name=f"{name}_join")([x, skip])
    return _conv_bn_relu(_in_plane_conv, x, filters, name=name, activation_name=activation_name)


def _mean_and_peak(x: Any) -> Any:
    """Each slice's mean and maximum activation: the mean alone dilutes a focal finding."""
    mean = layers.TimeDistributed(layers.GlobalAveragePooling2D(), name="slice_mean")(x)
    peak = layers.TimeDistributed(layers.GlobalMaxPooling2D(), name="slice_peak")(x)
    return layers.Concatenate(name="slice_pooled")([mean, peak])


def _across_slices(
    features: Sequence[Any], n_classes: int, gru_units: int, dropout: float
) -> dict[str, Any]:
    """Per-slice features through a bidirectional GRU to per-slice logits, pooled into the
    volume logits by attention over the slices."""
    x = features[0] if len(features) == 1 else layers.Concatenate(name="slice_features")(features)
    x = layers.Bidirectional(layers.GRU(gru_units, return_sequences=True), name="gru")(x)
    x = MCDropout(dropout, name="dropout")(x)
    slice_logits = layers.Dense(n_classes, name="slice_logits")(x)
    scores = layers.Dense(1, name="attention_score")(x)
    attention = layers.Softmax(axis=1, name="slice_attention")(scores)
    pooled = layers.Dot(axes=1, name="attention_pool")([attention, x])
    pooled = layers.Flatten(name="pooled")(pooled)
    return {"volume": layers.Dense(n_classes, name="volume_logits")(pooled), "slices": slice_logits}


def _conv_bn_relu(
    conv: Callable[..., Any],
    x: Any,
    filters: int,
    *,
    name: str,
    strides: int = 1,
    activation_name: str | None = None,
) -> Any:
    """Conv (no bias: BatchNorm's shift replaces it), BatchNorm, ReLU."""
    x = conv(filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=activation_name or f"{name}_relu")(x)
