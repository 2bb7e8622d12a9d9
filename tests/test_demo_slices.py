"""The MR demo's first stage: slice labels follow the lesion mask on the model grid, a short run
trains both heads on each epoch's own phantoms and records the stage, and the demo draws fresh
phantoms for every epoch from seeds below the validation ones."""

from __future__ import annotations

import numpy as np
import pytest

from napari_scan_classifier.datasets import ALL
from napari_scan_classifier.models.demo import mr, slices
from napari_scan_classifier.models.demo.common import Grid, on_grid
from napari_scan_classifier.models.demo.mask_stage import SlidingChunks, StageRun
from napari_scan_classifier.phantoms import BRAIN_CLASSES, SUBTLE, make_brain_mr_phantom
from napari_scan_classifier.preprocess import prepare, resample_to_grid

GRID = Grid((8, 24, 24), (20.0, 9.0, 9.0), {"kind": "zscore", "mask": "head"}, BRAIN_CLASSES)


def _triplet(seed: int):
    return [make_brain_mr_phantom(seed, name) for name in BRAIN_CLASSES]


def test_slice_labels_mark_the_lesions_slices_with_its_class_and_the_rest_normal() -> None:
    phantoms = _triplet(3)

    x, y, slice_y = slices.slice_labelled(phantoms, GRID)

    assert x.shape == (3, *GRID.input_shape) and y.tolist() == [0, 1, 2]
    assert slice_y.shape == (3, GRID.input_shape[0]) and not slice_y[0].any()
    for index, phantom in enumerate(phantoms[1:], start=1):
        _, grid = prepare(phantom.volume, GRID.input_shape, GRID.spacing, GRID.intensity)
        lesion = resample_to_grid(phantom.lesion_mask.astype(np.float32), grid, 0.0) > 0.5
        expected = np.where(lesion.any(axis=(1, 2)), index, 0)
        assert 0 < np.count_nonzero(expected) < GRID.input_shape[0]
        np.testing.assert_array_equal(slice_y[index], expected)


def test_the_slice_stage_trains_both_heads_and_records_itself() -> None:
    validation = on_grid(
        ((p.volume, p.class_name) for s in (40, 41) for p in _triplet(s)), GRID, "validation"
    )
    asked: list[int] = []

    def phantoms(epoch: int) -> list:  # each epoch its own triplets
        asked.append(epoch)
        return [p for seed in range(3 * epoch, 3 * epoch + 3) for p in _triplet(seed)]

    run = StageRun(2, 1e-3, width=4, batch_size=3, seed=0, description="9", verbose=False)

    bundle = slices.train_slice_localised(phantoms, validation, GRID, run)

    assert asked == [0, 1]

    m = bundle.metadata
    assert (m.name, m.version, m.architecture, m.modality) == ("slices", 1, "slice_gru", "MR")
    assert [s["name"] for s in m.training["stages"]] == ["slices"]
    assert len(m.training["history"]["val_auc"]) == 2
    assert 0.0 <= m.training["metrics"]["validation"]["auc"] <= 1.0
    outputs = bundle.model(validation.splits[ALL].x[:2, ..., None])
    assert outputs["volume"].shape == (2, 3) and outputs["slices"].shape == (2, 8, 3)

    run = StageRun(1, 3e-4, width=4, batch_size=3, seed=0, description="t1", verbose=False)
    before = [w.copy() for w in bundle.model.get_weights()]
    following = slices.train_slice_localised(
        phantoms, validation, GRID, run, base=bundle, name="t1"
    )
    assert [s["name"] for s in following.metadata.training["stages"]] == ["slices", "t1"]
    assert following.model is bundle.model  # continued, not a fresh network
    after = following.model.get_weights()
    assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True))


def test_each_epoch_of_the_slice_stage_gets_fresh_phantoms_below_the_validation_seeds() -> None:
    stage = mr.demo_stages(slice_epochs=3, t1_epochs=1, subtle_epochs=1, mixed_epochs=1)[0]

    epochs = mr._fresh_phantoms(9, 100, stage)

    seeds = [
        {int(p.volume.metadata["series_description"].split()[-1][:-1]) for p in epochs(e)}
        for e in range(3)
    ]
    assert seeds == [{100, 101, 102}, {103, 104, 105}, {106, 107, 108}]
    assert mr._stage_description(9, stage, fresh=True).startswith(
        "9 fresh brain MR phantoms each epoch (27 in all)"
    )
    too_long = mr.demo_stages(mr.SEED_RANGE // 3 + 1, 1, 1, 1)[0]
    with pytest.raises(ValueError, match="training seeds of the mask stages"):
        mr._fresh_phantoms(9, 100, too_long)


def test_the_t1_stage_draws_t1_like_triplets_two_in_three_after_the_slice_stages_seeds() -> None:
    stages = mr.demo_stages(slice_epochs=3, t1_epochs=2, subtle_epochs=1, mixed_epochs=1)
    t1 = stages[1]
    assert [s.name for s in stages[: mr.MASK_STAGES]] == ["slices", "t1", "subtle"]
    assert [s.name for s in stages[mr.MASK_STAGES :]] == ["mixed"]

    epochs = mr._fresh_phantoms(9, 100, t1, first_epoch=3)

    first, second = ([p.volume.metadata["series_description"] for p in epochs(e)] for e in (0, 1))
    assert {int(d.split()[-1][:-1]) for d in first} == {109, 110, 111}
    assert {int(d.split()[-1][:-1]) for d in second} == {112, 113, 114}
    contrasts = [next(c for c in ("T1", "FLAIR") if f" {c} " in d) for d in first]
    assert contrasts == ["T1"] * 6 + ["FLAIR"] * 3
    assert mr._stage_description(9, t1, fresh=True).endswith(
        "conspicuous T1-like, clear T1-like and clear FLAIR-like lesions"
    )
    with pytest.raises(ValueError, match="training seeds of the mask stages"):
        mr._fresh_phantoms(9, 100, t1, first_epoch=mr.SEED_RANGE // 3 - 1)


def test_the_subtle_stage_draws_subtle_lesions_every_other_triplet() -> None:
    subtle = mr.demo_stages(slice_epochs=3, t1_epochs=2, subtle_epochs=1, mixed_epochs=1)[2]

    phantoms = list(mr._fresh_phantoms(12, 100, subtle, first_epoch=5)(0))

    expected = [
        make_brain_mr_phantom(seed, name, lesions=lesions, contrast=contrast)
        for seed, (lesions, contrast) in zip(range(120, 124), mr.SUBTLE_DRAWS, strict=True)
        for name in BRAIN_CLASSES
    ]
    assert [p.class_name for p in phantoms] == [p.class_name for p in expected]
    for drawn, made in zip(phantoms, expected, strict=True):
        np.testing.assert_array_equal(drawn.volume.voxels, made.volume.voxels)
    assert mr.SUBTLE_DRAWS[0][0] == SUBTLE and mr.SUBTLE_DRAWS[2] == (SUBTLE, "T1")
    assert mr._stage_description(12, subtle, fresh=True).endswith(
        "subtle, clear T1-like, subtle T1-like and clear lesions"
    )


def test_sliding_chunks_draw_each_chunk_once_and_give_each_epoch_its_window() -> None:
    drawn: list[int] = []

    def chunk(number: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        drawn.append(number)
        return np.full((2, 1, 1, 1), number, np.float32), {"volume": np.array([number] * 2)}

    data = SlidingChunks(chunk, 3)
    x0, targets0 = data(0)
    x1, targets1 = data(1)

    assert x0.ravel().tolist() == [0, 0, 1, 1, 2, 2] and x1.ravel().tolist() == [1, 1, 2, 2, 3, 3]
    assert targets0["volume"].tolist() == [0, 0, 1, 1, 2, 2]
    assert targets1["volume"].tolist() == [1, 1, 2, 2, 3, 3]
    assert drawn == [0, 1, 2, 3]
