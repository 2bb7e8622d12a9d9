"""The two things Keras 3 does not abstract: gradients w.r.t. a tensor, and which device runs.

Everything else (models, ops) is written once with ``keras`` and ``keras.ops``. Here there is one
small function per backend behind one interface, picked by ``keras.backend.backend()``; backend
libraries are imported inside those functions, so only the active one ever loads.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

ScalarFn = Callable[[Any], Any]
WeightedFn = Callable[[Any, Any], Any]  # (input, weights) -> scalar
GradientFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def value_and_gradient(fn: ScalarFn, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``fn(x)`` and its gradient w.r.t. ``x``, as NumPy; ``fn`` maps a tensor to a scalar tensor.

    Saliency needs d(class logit)/d(activation), which no ``keras.ops`` function gives.
    """
    return _backend_gradient()(fn, np.asarray(x, dtype=np.float32))


def _backend_gradient() -> Callable[[ScalarFn, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    name = keras.backend.backend()
    if name not in _GRADIENTS:
        raise RuntimeError(
            f"saliency maps need gradients, which the Keras '{name}' backend does not provide; "
            "set KERAS_BACKEND to tensorflow, jax or torch"
        )
    return _GRADIENTS[name]


def compiled_gradient(fn: WeightedFn) -> GradientFn:
    """``(x, weights) -> (fn(x, weights), d fn / d x)`` as NumPy, compiled once where the backend
    compiles (TensorFlow traces a graph at the first call and reuses it for inputs of the same
    shapes: on the demo MR network a gradient pass runs twice as fast as eagerly). Keep the
    result for the next call: each new one traces again. ``weights`` is an argument, not a
    constant, so one trace serves every class."""
    if keras.backend.backend() != "tensorflow":
        _backend_gradient()  # refuses a backend without gradients now, not at the first call
        return lambda x, weights: value_and_gradient(lambda t: fn(t, weights), x)
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def traced(x: Any, weights: Any) -> tuple[Any, Any]:
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = fn(x, weights)
        return value, tape.gradient(value, x)

    def run(x: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        value, gradient = traced(
            tf.convert_to_tensor(np.asarray(x, dtype=np.float32)),
            tf.convert_to_tensor(np.asarray(weights, dtype=np.float32)),
        )
        return value.numpy(), gradient.numpy()

    return run


@functools.cache
def device_name() -> str:
    """The device Keras runs models on, e.g. ``"CPU"`` or ``"GPU:0 (NVIDIA H100 80GB HBM3)"``.

    Each backend places work on its first accelerator when it sees one, else on the CPU.
    Cached: the answer cannot change within a process, and asking TensorFlow is not free.
    """
    return _DEVICES.get(keras.backend.backend(), _cpu)()


def _tensorflow_gradient(fn: ScalarFn, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow as tf

    tensor = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(tensor)
        value = fn(tensor)
    return value.numpy(), tape.gradient(value, tensor).numpy()


def _jax_gradient(fn: ScalarFn, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import jax
    import jax.numpy as jnp

    value, gradient = jax.value_and_grad(fn)(jnp.asarray(x))
    return np.asarray(value), np.asarray(gradient)


def _torch_gradient(fn: ScalarFn, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import torch

    # convert_to_tensor puts x on the device Keras uses (CUDA when available).
    tensor = keras.ops.convert_to_tensor(x).detach().requires_grad_(True)
    value = fn(tensor)
    (gradient,) = torch.autograd.grad(value, tensor)
    return value.detach().cpu().numpy(), gradient.detach().cpu().numpy()


def _tensorflow_device() -> str:
    import tensorflow as tf

    if not tf.config.list_logical_devices("GPU"):
        return "CPU"
    details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
    return _gpu_label(0, details.get("device_name"))


def _jax_device() -> str:
    import jax

    device = jax.devices()[0]
    if device.platform == "cpu":
        return "CPU"
    return f"{device.platform.upper()}:{device.id} ({device.device_kind})"


def _torch_device() -> str:
    import torch

    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        return _gpu_label(index, torch.cuda.get_device_name(index))
    if torch.backends.mps.is_available():
        return "MPS (Apple GPU)"
    return "CPU"


def _cpu() -> str:
    return "CPU"


def _gpu_label(index: int, name: str | None) -> str:
    return f"GPU:{index} ({name})" if name else f"GPU:{index}"


_GRADIENTS: dict[str, Callable[[ScalarFn, np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    "tensorflow": _tensorflow_gradient,
    "jax": _jax_gradient,
    "torch": _torch_gradient,
}
_DEVICES: dict[str, Callable[[], str]] = {
    "tensorflow": _tensorflow_device,
    "jax": _jax_device,
    "torch": _torch_device,
}
