"""The CT demo recipe's stages: blurred copies (the faithfulness check's fill, lesion removed or
kept), each stage's pool of phantoms, and the move from the coarse grid to the final one."""

import numpy as np
import pytest
from model_fixtures import metadata as tiny_metadata
from scipy import ndimage

from napari_scan_classifier.models import Bundle
from napari_scan_classifier.models.demo import ct, ct_phantoms, localise, mask_stage
from napari_scan_classifier.models.demo.common import SEED_RANGE
from napari_scan_classifier.preprocess import prepare, resample_to_grid

SHAPES = ((40, 64, 64),)
GRID = ct_phantoms.grid((24, 24, 24))


def _lesion_phantom():
    return next(
        p
        for p in ct_phantoms.paired_phantoms(2, 7, SHAPES, ct_phantoms.CLEAR_LESIONS)
        if p.label == 1
    )


def test_a_blurred_copy_loses_its_lesion_unless_kept():
    phantom = _lesion_phantom()
    x, grid = prepare(phantom.volume, GRID.input_shape, GRID.spacing, GRID.intensity)
    lesion = resample_to_grid(phantom.lesion_mask.astype(np.float32), grid, 0.0) > 0.05
    core = resample_to_grid(phantom.lesion_mask.astype(np.float32), grid, 0.0) > 0.9
    rng = np.random.default_rng(0)

    removed = localise.blurred(x, grid, lesion, rng, keep=False)
    kept = localise.blurred(x, grid, lesion, rng, keep=True)

    assert np.array_equal(kept[lesion], x[lesion])
    organ = float(x[ndimage.binary_dilation(lesion, iterations=2) & ~lesion].mean())
    contrast = abs(float(x[core].mean()) - organ)
    assert abs(float(removed[core].mean()) - organ) < 0.5 * contrast
    assert removed.shape == kept.shape == x.shape


def test_cell_labelled_adds_one_copy_per_lesion_phantom_alternately_normal():
    found = ct_phantoms.paired_phantoms(4, 7, SHAPES, ct_phantoms.CLEAR_LESIONS)

    x, y, cells = localise.cell_labelled(found, GRID, (6, 6, 6), blur_seed=3)
    plain_x, plain_y, plain_cells = localise.cell_labelled(
        ct_phantoms.paired_phantoms(4, 7, SHAPES, ct_phantoms.CLEAR_LESIONS), GRID, (6, 6, 6)
    )

    assert y.tolist() == [0, 1, 0, 0, 1, 1] and plain_y.tolist() == [0, 1, 0, 1]
    assert cells[2].sum() == 0 and cells[1].sum() > 0
    assert np.array_equal(cells[5], cells[4])
    assert np.array_equal(x[[0, 1, 3, 4]], plain_x) and not np.array_equal(x[2], x[1])
    assert np.array_equal(cells[[0, 1, 3, 4]], plain_cells)


def test_the_localise_pool_renews_one_chunk_of_phantom_pairs_each_epoch():
    lesions = ct.demo_stages(3, 1, 1, 1, 1)[0].data
    chunks = ct_phantoms.pool_chunks(20, 500, ((16, 24, 24),), lesions, epochs=3)

    seeds = [
        sorted({p.volume.metadata["series_description"] for p in chunks(c)}) for c in (0, 1, 6)
    ]
    described = ct_phantoms.pool_description(20, ((16, 24, 24),), lesions, True, epochs=3)

    assert seeds == [
        [f"Synthetic CT phantom (seed {s})" for s in pair]
        for pair in ((500, 501), (502, 503), (512, 513))
    ]
    assert [p.class_name for p in chunks(0)] == ["normal", "lesion"] * 2
    assert described.endswith("with 10 blurred copies; 4 of them fresh each epoch (28 in all)")
    with pytest.raises(ValueError, match="training seeds of the stages on lesion masks"):
        ct_phantoms.pool_chunks(20, 500, ((16, 24, 24),), lesions, epochs=SEED_RANGE)


def test_the_small_lesion_stage_takes_both_kinds_in_every_field_of_view_after_the_first():
    stages = ct.demo_stages(3, 2, 1, 1, 1)
    first, small = stages[0], stages[1]
    shapes = ((16, 24, 24), (16, 28, 28))
    later = first.epochs + ct_phantoms.POOL_CHUNKS - 1
    chunks = ct_phantoms.pool_chunks(40, 500, shapes, small.data, small.epochs, first_chunk=later)

    found = [p for p in chunks(0) if p.label == 1]
    radii = [
        max(max(les["radii_mm"]) for les in p.volume.metadata["phantom_lesions"]) for p in found
    ]
    kinds = [(p.volume.shape, radius <= 1.2 * 9.0) for p, radius in zip(found, radii, strict=True)]
    seeds = {p.volume.metadata["series_description"] for p in chunks(0)}
    described = ct_phantoms.pool_description(40, shapes, small.data, True, small.epochs)

    assert [s.name for s in stages] == [
        "localise",
        "small-lesions",
        "subtle-lesions",
        "fine-grid",
        "scan-labels",
    ]
    assert small.data == (ct_phantoms.SMALL_LESIONS, ct_phantoms.TRAIN_LESIONS)
    assert seeds == {f"Synthetic CT phantom (seed {500 + 4 * later + i})" for i in range(4)}
    assert {shape for shape, _ in kinds} == {(16, 24, 24), (16, 28, 28)}
    assert kinds[0][1] and kinds[1][1]  # the first two pairs: small lesions, both fields of view
    assert "lesions 5-9 mm, 20-120 HU or 5-20 mm, 20-120 HU (in turn by pair)" in described
    with pytest.raises(ValueError, match="training seeds of the stages on lesion masks"):
        ct_phantoms.pool_chunks(40, 500, shapes, small.data, SEED_RANGE // 4, first_chunk=later)


def test_the_subtle_lesion_stage_takes_faint_lesions_every_other_pair_after_the_small_stage():
    """make_cases' lesions (5-15 mm, 20-60 HU) in every other pair, the seeds after the small
    stage's."""
    localise, small, subtle = ct.demo_stages(3, 2, 2, 1, 1)[:3]
    shapes = ((16, 24, 24),)
    later = sum(stage.epochs + ct_phantoms.POOL_CHUNKS - 1 for stage in (localise, small))
    chunks = ct_phantoms.pool_chunks(40, 500, shapes, subtle.data, subtle.epochs, first_chunk=later)

    found = [p.volume.metadata["phantom_lesions"] for p in chunks(0) if p.label == 1]
    described = ct_phantoms.pool_description(40, shapes, subtle.data, True, subtle.epochs)

    assert subtle.data == (ct_phantoms.SUBTLE_LESIONS, ct_phantoms.TRAIN_LESIONS)
    assert subtle.name == "subtle-lesions" and subtle.learning_rate == 3e-4
    faint = found[0]
    assert all(20.0 <= abs(lesion["contrast"]) <= 60.0 for lesion in faint)
    assert all(max(lesion["radii_mm"]) <= 1.2 * 15.0 for lesion in faint)
    seeds = {p.volume.metadata["series_description"] for p in chunks(0)}
    assert seeds == {f"Synthetic CT phantom (seed {500 + 4 * later + i})" for i in range(4)}
    assert "lesions 5-15 mm, 20-60 HU or 5-20 mm, 20-120 HU (in turn by pair)" in described


def test_the_fine_grid_stage_takes_every_kind_on_the_final_grid_from_seeds_of_its_own():
    """The first three stages learn on the coarse grid; the fine-grid stage draws its pool from
    its own seed block, so it cannot run into the first stages' seeds however long they are."""
    stages = ct.demo_stages(3, 2, 2, 4, 1, coarse_shape=(12, 12, 12))
    fine = stages[3]
    chunks = ct_phantoms.pool_chunks(40, 500 + fine.seeds, SHAPES, fine.data, fine.epochs)

    seeds = {p.volume.metadata["series_description"] for p in chunks(0)}

    assert [s.input_shape for s in stages] == [(12, 12, 12)] * 3 + [None, None]
    assert fine.name == "fine-grid" and ct.MASK_STAGES == 4
    assert fine.data == (
        ct_phantoms.SUBTLE_LESIONS,
        ct_phantoms.TRAIN_LESIONS,
        ct_phantoms.SMALL_LESIONS,
        ct_phantoms.TRAIN_LESIONS,
    )
    assert fine.seeds >= SEED_RANGE * 4  # past validation (1x) and the held-out tests (2x, 3x)
    assert seeds == {f"Synthetic CT phantom (seed {500 + fine.seeds + i})" for i in range(4)}


def test_a_network_moved_to_a_finer_grid_keeps_its_weights_and_reads_the_finer_grid():
    coarse = ct_phantoms.grid((12, 12, 12))
    run = mask_stage.StageRun(1, 1e-3, 4, 2, 3, "")
    bundle = Bundle(
        tiny_metadata(architecture="cnn3d_mil", input_shape=coarse.input_shape),
        mask_stage.fresh_model("cnn3d_mil", coarse, 4, 3),
    )

    moved = mask_stage.regridded(bundle, GRID, run)

    assert moved.metadata.input_shape == GRID.input_shape
    assert moved.model.input_shape[1:4] == GRID.input_shape
    for old, new in zip(bundle.model.get_weights(), moved.model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    x = np.random.default_rng(0).normal(size=(2, *GRID.input_shape, 1)).astype(np.float32)
    assert np.asarray(moved.model(x, training=False)["volume"]).shape == (2, 2)
    assert mask_stage.regridded(moved, GRID, run) is moved  # already there: unchanged
