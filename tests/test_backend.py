"""The per-backend calls: gradients (eager and compiled) are right, the device is named, other
backends are refused."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from napari_scan_classifier import backend


def test_value_and_gradient_of_a_known_function():
    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
    weights = keras.ops.convert_to_tensor(np.linspace(-1, 1, 6).reshape(2, 3).astype(np.float32))

    value, gradient = backend.value_and_gradient(lambda t: keras.ops.sum(weights * t**2), x)
    w = np.linspace(-1, 1, 6).reshape(2, 3)
    assert float(value) == pytest.approx(float(np.sum(w * x**2)), rel=1e-5)
    np.testing.assert_allclose(gradient, 2 * w * x, rtol=1e-5)
    assert gradient.shape == x.shape


def test_gradient_through_a_keras_layer():
    keras.utils.set_random_seed(0)
    dense = keras.layers.Dense(3)
    x = np.random.default_rng(0).random((4, 5), dtype=np.float32)
    _, gradient = backend.value_and_gradient(lambda t: keras.ops.sum(dense(t)[:, 1]), x)
    kernel = dense.kernel.numpy()
    np.testing.assert_allclose(gradient, np.tile(kernel[:, 1], (4, 1)), rtol=1e-5)


def test_a_compiled_gradient_takes_its_weights_at_each_call():
    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
    gradient_of = backend.compiled_gradient(lambda t, w: keras.ops.sum(w * t**2))
    for w in (np.linspace(-1, 1, 3), np.array([0.0, 2.0, 0.0])):
        value, gradient = gradient_of(x, w.astype(np.float32))
        assert float(value) == pytest.approx(float(np.sum(w * x**2)), rel=1e-5)
        np.testing.assert_allclose(gradient, 2 * w * x, rtol=1e-5)


def test_the_device_is_a_cpu_or_a_numbered_gpu():
    name = backend.device_name()
    assert name == "CPU" or name.startswith(("GPU:", "MPS"))
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        assert (name == "CPU") == (not tf.config.list_logical_devices("GPU"))


def test_a_backend_without_gradients_is_refused(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "numpy")
    with pytest.raises(RuntimeError, match="'numpy' backend"):
        backend.value_and_gradient(lambda t: t, np.zeros(2))
    with pytest.raises(RuntimeError, match="'numpy' backend"):
        backend.compiled_gradient(lambda t, w: t)
