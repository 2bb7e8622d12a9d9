"""MR augmentation: a smooth multiplicative bias field and a global gain, then the model's own
recipe again; CT is left without them."""

from __future__ import annotations

import numpy as np
import pytest

from napari_scan_classifier.phantoms import make_brain_mr_phantom
from napari_scan_classifier.preprocess import head_mask, prepare
from napari_scan_classifier.training.augment import augment, mr_intensity

RECIPE = {"kind": "zscore", "mask": "head"}


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    phantom = make_brain_mr_phantom(3, "tumour", shape=(24, 80, 80), spacing=(6.0, 2.8, 2.8))
    return prepare(phantom.volume, (16, 64, 64), None, RECIPE)[0]


def test_the_bias_field_is_smooth_and_the_gain_global(volume):
    above = volume - volume.min()
    head = head_mask(volume) & (above > 0.5)
    gains = []
    for seed in range(8):
        field = mr_intensity(volume, np.random.default_rng(seed))[head] / above[head]
        gains.append(np.median(field))
        spread = field / np.median(field)
        assert 0.05 < spread.std() < 0.5  # it varies across the head ...
    assert max(gains) / min(gains) > 2.0  # ... under a gain that moves the whole scan
    one = mr_intensity(volume, np.random.default_rng(0)) / np.maximum(above, 1e-3)
    steps = np.abs(np.diff(one, axis=2))[head[:, :, 1:] & head[:, :, :-1]]
    assert np.median(steps / np.median(one[head])) < 0.02  # ... smoothly, voxel to voxel


def test_an_mr_recipe_normalises_the_augmented_scan_again(volume):
    out = augment(volume, (0, 2), np.random.default_rng(5), 1.0, RECIPE)
    inside = head_mask(out)
    raw = mr_intensity(volume, np.random.default_rng(5))[head_mask(volume)]
    assert raw.mean() > 0.5  # before the recipe: background at 0, the head above it
    # after it (and the rotation, +-10 % gain, small shift and noise that follow): z-scores
    assert out.dtype == np.float32 and out.shape == volume.shape
    assert abs(float(out[inside].mean())) < 0.2
    assert float(out[inside].std()) == pytest.approx(1.0, abs=0.15)
    assert not np.allclose(out, volume, atol=0.05)


def test_a_ct_window_gets_no_bias_field(volume):
    ct = {"kind": "ct_window", "center": 40.0, "width": 400.0}
    plain = augment(volume, (0, 2), np.random.default_rng(2), 1.0)
    windowed = augment(volume, (0, 2), np.random.default_rng(2), 1.0, ct)
    np.testing.assert_array_equal(windowed, plain)
