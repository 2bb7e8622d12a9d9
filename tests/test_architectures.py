"""The architectures train, predict with the documented shapes, and sample MC dropout."""

import keras
import numpy as np
import pytest

from napari_scan_classifier.models.architectures import (
    ARCHITECTURES,
    GRADCAM_LAYER,
    MCDropout,
    build_cnn3d,
    build_cnn3d_mil,
    build_slice_gru,
    with_mc_dropout,
)

SHAPE = (8, 16, 16, 1)


def tiny(name: str, n_classes: int = 3, dropout: float = 0.5) -> keras.Model:
    keras.utils.set_random_seed(0)
    kwargs = {"gru_units": 4} if name == "slice_gru" else {}
    return ARCHITECTURES[name](SHAPE, n_classes, width=4, dropout=dropout, **kwargs)


def scans(n: int) -> np.ndarray:
    return np.random.default_rng(1).random((n, *SHAPE), dtype=np.float32)


def test_registry_names_the_builders():
    assert ARCHITECTURES["cnn3d"] is build_cnn3d
    assert ARCHITECTURES["slice_gru"] is build_slice_gru
    assert ARCHITECTURES["cnn3d_mil"] is build_cnn3d_mil


def test_cnn3d_mil_keeps_a_quarter_grid_map_and_pools_its_maximum():
    model = tiny("cnn3d_mil", n_classes=2)
    assert tuple(model.get_layer(GRADCAM_LAYER).output.shape[1:]) == (2, 4, 4, 16)
    evidence = model.get_layer("evidence").output  # scored cell by cell: (8, 16, 16) / 4
    assert tuple(evidence.shape[1:]) == (2, 4, 4, 16)
    parts = keras.Model(model.input, [evidence, model.get_layer("pool").output])
    cells, pooled = (keras.ops.convert_to_numpy(p) for p in parts(scans(2)))
    np.testing.assert_allclose(pooled, cells.max(axis=(1, 2, 3)), rtol=1e-6)
    out = model.predict(scans(2), verbose=0)
    assert set(out) == {"volume"} and out["volume"].shape == (2, 2)


def test_cnn3d_trains_and_predicts():
    model = tiny("cnn3d")
    labels = np.array([0, 1, 2, 1])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer="adam", loss={"volume": loss})
    history = model.fit(scans(4), {"volume": labels}, epochs=2, batch_size=4, verbose=0)

    assert np.all(np.isfinite(history.history["loss"]))
    out = model.predict(scans(2), verbose=0)
    assert set(out) == {"volume"} and out["volume"].shape == (2, 3)
    assert model.get_layer(GRADCAM_LAYER).output.shape[-1] == 32


def test_slice_gru_trains_and_scores_every_slice():
    model = tiny("slice_gru", n_classes=2)
    labels = np.array([0, 1, 1, 0])
    slice_labels = np.repeat(labels[:, None], SHAPE[0], axis=1)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer="adam", loss={"volume": loss, "slices": loss})
    targets = {"volume": labels, "slices": slice_labels}
    history = model.fit(scans(4), targets, epochs=2, batch_size=4, verbose=0)

    assert np.all(np.isfinite(history.history["loss"]))
    out = model.predict(scans(2), verbose=0)
    assert out["volume"].shape == (2, 2) and out["slices"].shape == (2, SHAPE[0], 2)
    assert model.get_layer(GRADCAM_LAYER).output.shape[:2] == (None, SHAPE[0])
    assert model.get_layer("slice_attention").output.shape == (None, SHAPE[0], 1)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_dropout_varies_only_when_asked(name):
    model = tiny(name)
    x = scans(2)

    np.testing.assert_array_equal(model(x)["volume"], model(x)["volume"])
    assert not np.allclose(model(x, training=True)["volume"], model(x, training=True)["volume"])
    twin = with_mc_dropout(model)
    assert not np.allclose(twin(x)["volume"], twin(x)["volume"])
    assert all(layer.always_on for layer in twin.layers if isinstance(layer, MCDropout))
    assert not any(layer.always_on for layer in model.layers if isinstance(layer, MCDropout))


def test_mc_twin_keeps_batchnorm_on_moving_statistics():
    model = tiny("cnn3d", dropout=0.0)
    x = scans(2)
    # training=True switches BatchNorm to batch statistics; the twin's only randomness is dropout.
    assert not np.allclose(model(x, training=True)["volume"], model(x)["volume"])
    np.testing.assert_allclose(with_mc_dropout(model)(x)["volume"], model(x)["volume"], rtol=1e-6)


def test_always_on_survives_saving(tmp_path):
    twin = with_mc_dropout(tiny("cnn3d"))
    twin.save(tmp_path / "twin.keras")
    loaded = keras.saving.load_model(tmp_path / "twin.keras", safe_mode=True, compile=False)
    assert loaded.get_layer("dropout").always_on
