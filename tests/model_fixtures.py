"""Small bundles and scans for the inference and saliency tests.

``sphere_case`` makes the simplest scan a classifier can learn where the lesion is the only
signal: soft-tissue noise, plus one bright sphere for class 1. ``trained_sphere_bundle`` is a
width-8 cnn3d on a 32^3 grid trained on 160 of them (15-30 s on two cores), trained once per
test session (cached) whichever module asks first. ``trained_brightness_bundle`` is its
opposite for the saliency checks: it learns the whole scan's brightness and ignores spheres.
``trained_sides_bundle`` has three classes that differ only by where the sphere is
(``side_case``): none, in the low-x third, in the high-x third, for per-class saliency.
``save_ranking_models`` installs a CT trunk and an MR head model whose uncertainties differ from
scan to scan and repeat exactly, for rankings where each scan chooses its model.

Plain functions, imported by the test modules (tests/ is on sys.path in pytest's default
"prepend" import mode); module fixtures wrap them where needed.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from napari_scan_classifier.inference import prepare_input
from napari_scan_classifier.models import (
    ARCHITECTURES,
    Bundle,
    BundleMetadata,
    build_cnn3d,
    save_bundle,
)
from napari_scan_classifier.volume import Volume

GRID = (32, 32, 32)
CLASSES = ["normal", "lesion"]
CT_WINDOW = {"kind": "ct_window", "center": 40.0, "width": 400.0}
SPHERE_HU = 180.0
NOISE_HU = 20.0
BRIGHT_HU = 60.0
TEMPERATURE = 1.5


def metadata(**changes: object) -> BundleMetadata:
    fields = {
        "name": "sphere-test",
        "version": 1,
        "classes": CLASSES,
        "modality": "CT",
        "task": "volume",
        "input_shape": GRID,
        "target_spacing_mm": None,
        "intensity": CT_WINDOW,
        "architecture": "cnn3d",
        "temperature": TEMPERATURE,
    }
    return BundleMetadata(**{**fields, **changes})


def sphere_case(
    seed: int,
    label: int,
    shape: tuple[int, int, int] = GRID,
    spacing: tuple[float, float, float] = (2.0, 2.0, 2.0),
) -> tuple[Volume, np.ndarray]:
    """A noisy soft-tissue CT (int16 HU) and its lesion mask: one bright sphere if ``label``."""
    rng = np.random.default_rng(seed)
    hu = rng.normal(40.0, NOISE_HU, shape)
    mask = np.zeros(shape, dtype=bool)
    if label:
        radius = rng.uniform(3.0, 5.0)
        centre = [rng.uniform(radius + 1, n - radius - 2) for n in shape]
        grid = np.indices(shape, dtype=float)
        mask = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2
        hu[mask] += SPHERE_HU
    affine = np.diag([*spacing, 1.0])
    return Volume(np.round(hu).astype(np.int16), affine, modality="CT"), mask


SIDES = ["normal", "side_a", "side_b"]  # no sphere; one at low x; one at high x


def side_case(
    seed: int, sides: Sequence[str], shape: tuple[int, int, int] = GRID
) -> tuple[Volume, dict[str, np.ndarray]]:
    """A noisy soft-tissue CT with a bright sphere in each of ``sides`` ("side_a": the low-x
    third, "side_b": the high-x third) and the sphere masks by side."""
    rng = np.random.default_rng(seed)
    hu = rng.normal(40.0, NOISE_HU, shape)
    grid = np.indices(shape, dtype=float)
    masks = {}
    for side in sides:
        radius = rng.uniform(3.0, 4.5)
        low, high = (radius + 1, shape[2] / 3) if side == "side_a" else (2 * shape[2] / 3, None)
        high = shape[2] - radius - 2 if high is None else high
        centre = [rng.uniform(radius + 1, n - radius - 2) for n in shape[:2]]
        centre.append(rng.uniform(low, high))
        masks[side] = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2
        hu[masks[side]] += SPHERE_HU
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    return Volume(np.round(hu).astype(np.int16), affine, modality="CT"), masks


def tiny_bundle(
    architecture: str = "cnn3d", grid: tuple[int, int, int] = GRID, **changes: object
) -> Bundle:
    """An untrained, seeded model: fast, and enough for checks that need no skill."""
    keras.utils.set_random_seed(0)
    k = len(changes.get("classes", CLASSES))  # type: ignore[arg-type]
    recurrent = {"gru_units": 4} if architecture.startswith("slice_") else {}
    model = ARCHITECTURES[architecture]((*grid, 1), k, width=4, dropout=0.5, **recurrent)
    meta = metadata(architecture=architecture, input_shape=grid, **changes)
    return Bundle(meta, model)


def spread_logits(bundle: Bundle) -> Bundle:
    """Logits of an untrained net are near 0: spread them (in place) so differences show."""
    dense = bundle.model.get_layer("volume_logits")
    dense.kernel.assign(dense.kernel * 40.0)
    return bundle


@functools.cache
def trained_sphere_bundle(cases: int = 160, epochs: int = 3) -> Bundle:
    """A cnn3d that has learned to tell scans with a sphere from scans without.

    Scans of varied sizes (stretched onto the grid) teach it spheres of several sizes. XLA makes
    training on a CPU about ten times faster (TensorFlow's own 3D convolution gradients are
    slow). The BatchNorm moving statistics cannot catch up in so few steps (momentum 0.99), so
    they are re-estimated on the training set at the end.
    """
    rng = np.random.default_rng(7)
    labels = np.arange(cases) % 2
    volumes = [
        sphere_case(1000 + i, y, tuple(rng.integers(28, 45, 3)))[0] for i, y in enumerate(labels)
    ]
    return _trained(volumes, labels, epochs)


@functools.cache
def trained_brightness_bundle(cases: int = 48, epochs: int = 3) -> Bundle:
    """A cnn3d that tells scans brightened by ``BRIGHT_HU`` from plain ones; every other scan of
    both classes has a sphere, so spheres tell it nothing and it learns to ignore them."""
    labels = np.arange(cases) % 2
    volumes = [
        brightened(sphere_case(3000 + i, (i // 2) % 2)[0], BRIGHT_HU * y)
        for i, y in enumerate(labels)
    ]
    return _trained(volumes, labels, epochs)


@functools.cache
def trained_sides_bundle(cases: int = 150, epochs: int = 4) -> Bundle:
    """A three-class cnn3d: no sphere, a sphere in the low-x third, one in the high-x third
    (scans of varied sizes, as for ``trained_sphere_bundle``)."""
    rng = np.random.default_rng(8)
    labels = np.arange(cases) % 3
    volumes = [
        side_case(5000 + i, SIDES[1:][y - 1 : y], tuple(rng.integers(28, 45, 3)))[0]
        for i, y in enumerate(labels)
    ]
    return _trained(volumes, labels, epochs, SIDES)


def brightened(volume: Volume, hu: float) -> Volume:
    return volume.with_voxels((volume.voxels + np.int16(round(hu))).astype(np.int16))


def _trained(
    volumes: list[Volume], labels: np.ndarray, epochs: int, classes: list[str] = CLASSES
) -> Bundle:
    keras.utils.set_random_seed(1)
    model = build_cnn3d((*GRID, 1), len(classes), width=8, dropout=0.2)
    bundle = Bundle(metadata(classes=classes), model)
    x = np.stack([prepare_input(volume, bundle)[0] for volume in volumes])[..., None]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    xla = keras.backend.backend() != "torch"  # XLA under TensorFlow and JAX
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss={"volume": loss}, jit_compile=xla)
    model.fit(x, {"volume": labels}, epochs=epochs, batch_size=16, verbose=0)
    _refresh_batchnorm(model, x)
    return bundle


def _refresh_batchnorm(model: keras.Model, x: np.ndarray) -> None:
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0
    model(x, training=True)
    for layer, momentum in zip(norms, momenta, strict=True):
        layer.momentum = momentum


RANKING_MR_CLASSES = ["normal", "tumour", "infarct"]


def spread_bundle(**changes: object) -> Bundle:
    """A tiny seeded model with dropout rate 0 (every pass the same, so two rankings compare
    exactly) and logits spread out, so that the scans' uncertainties differ."""
    keras.utils.set_random_seed(0)
    k = len(changes.get("classes", CLASSES))  # type: ignore[arg-type]
    model = build_cnn3d((*GRID, 1), k, width=4, dropout=0.0)
    return spread_logits(Bundle(metadata(**changes), model))


def save_ranking_models(folder: Path) -> dict[str, Path]:
    """A two-class CT trunk (abdomen) model and a three-class MR head model saved in
    ``folder``; their bundle folders by modality."""
    ct = spread_bundle(name="tiny_ct_trunk", body_region="abdomen")
    mr = spread_bundle(
        name="tiny_mr_head",
        modality="MR",
        intensity={"kind": "zscore"},
        classes=RANKING_MR_CLASSES,
        body_region="head",
    )
    return {"CT": save_bundle(ct, folder / "ct"), "MR": save_bundle(mr, folder / "mr")}
