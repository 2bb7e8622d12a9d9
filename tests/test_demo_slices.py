"""The MR demo's first stage: voxel and slice labels follow the lesion mask on the model grid, a
short run trains every head on each epoch's own phantoms and records the stage, and the demo
draws fresh phantoms for every epoch from seeds below the validation ones."""

from __future__ import annotations

from dataclasses import replace

import keras
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from napari_scan_classifier.datasets import ALL
from napari_scan_classifier.models import load_bundle, save_bundle
from napari_scan_classifier.models.architectures import PIXEL_LOGITS_LAYER
from napari_scan_classifier.models.demo import lesion_slices, mr, slices
from napari_scan_classifier.models.demo.common import Grid, on_grid
from napari_scan_classifier.models.demo.mask_stage import SlidingChunks, StageRun
from napari_scan_classifier.phantoms import BRAIN_CLASSES, CLEAR, SUBTLE, make_brain_mr_phantom
from napari_scan_classifier.preprocess import prepare, resample_to_grid

GRID = Grid((8, 24, 24), (20.0, 9.0, 9.0), {"kind": "zscore", "mask": "head"}, BRAIN_CLASSES)


def _triplet(seed: int):
    return [make_brain_mr_phantom(seed, name) for name in BRAIN_CLASSES]


def test_voxel_and_slice_labels_mark_the_lesion_with_its_class_and_the_rest_normal() -> None:
    phantoms = _triplet(3)

    x, y, voxel_y = slices.pixel_labelled(phantoms, GRID)
    slice_y = slices.slice_labels(voxel_y)

    assert x.shape == (3, *GRID.input_shape) and y.tolist() == [0, 1, 2]
    assert voxel_y.shape == (3, *GRID.input_shape) and not voxel_y[0].any()
    assert slice_y.shape == (3, GRID.input_shape[0]) and not slice_y[0].any()
    for index, phantom in enumerate(phantoms[1:], start=1):
        _, grid = prepare(phantom.volume, GRID.input_shape, GRID.spacing, GRID.intensity)
        lesion = resample_to_grid(phantom.lesion_mask.astype(np.float32), grid, 0.0) > 0.5
        np.testing.assert_array_equal(voxel_y[index], np.where(lesion, index, 0))
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


def test_a_network_with_pixel_logits_learns_where_the_lesion_lies_pixel_by_pixel() -> None:
    """After a short run, lesion pixels' logits for the scan's class (over ``normal``) rank above
    those of the rest of the head; untrained, they do not."""
    fine = Grid((8, 48, 48), (20.0, 4.5, 4.5), GRID.intensity, BRAIN_CLASSES)
    triplets = [
        make_brain_mr_phantom(seed, name, lesions=mr.CONSPICUOUS)
        for seed in range(4)
        for name in BRAIN_CLASSES
    ]
    validation = on_grid(((p.volume, p.class_name) for p in _triplet(40)), fine, "validation")
    x, y, voxel_y = slices.pixel_labelled(triplets, fine)
    run = StageRun(10, 3e-3, width=4, batch_size=3, seed=0, description="12", verbose=False)

    def lesion_pixel_auc(bundle) -> float:
        pixels = keras.Model(bundle.model.input, bundle.model.get_layer(PIXEL_LOGITS_LAYER).output)
        logits = np.asarray(pixels(x[..., None]))
        lesioned = np.flatnonzero(y > 0)
        scores = [(logits[i, ..., y[i]] - logits[i, ..., 0]).ravel() for i in lesioned]
        truth = [(voxel_y[i] > 0).ravel() for i in lesioned]
        return roc_auc_score(np.concatenate(truth), np.concatenate(scores))

    untrained = slices.train_slice_localised(
        lambda epoch: triplets,
        validation,
        fine,
        replace(run, epochs=1, learning_rate=1e-9),
        architecture="slice_unet_gru",
    )
    trained = slices.train_slice_localised(
        lambda epoch: triplets, validation, fine, run, architecture="slice_unet_gru"
    )

    assert trained.metadata.architecture == "slice_unet_gru"
    assert lesion_pixel_auc(untrained) < 0.6 < 0.75 < lesion_pixel_auc(trained)
    outputs = trained.model(x[:2, ..., None])
    assert set(outputs) == {"volume", "slices"} and outputs["slices"].shape == (2, 8, 3)


def test_each_epoch_of_the_scan_stage_gets_fresh_phantoms_below_the_validation_seeds() -> None:
    stage = mr.demo_stages(1, 1, 1, scan_epochs=3, mixed_epochs=1)[3]

    epochs = mr._fresh_phantoms(9, 100, stage, start=18)

    seeds = [
        {int(p.volume.metadata["series_description"].split()[-1][:-1]) for p in epochs(e)}
        for e in range(3)
    ]
    assert seeds == [{118, 119, 120}, {121, 122, 123}, {124, 125, 126}]
    assert mr._stage_description(9, stage, fresh=True) == (
        "9 fresh brain MR phantoms each epoch (27 in all) in triplets, clear and subtle lesions"
    )
    too_long = mr.demo_stages(1, 1, 1, mr.SEED_RANGE // 3, 1)[3]
    with pytest.raises(ValueError, match="training seeds of the mask stages"):
        mr._fresh_phantoms(9, 100, too_long, start=18)


def test_the_recipe_trains_the_encoder_then_whole_scans_then_scan_labels() -> None:
    stages = mr.demo_stages(
        infarct_epochs=4, slice_epochs=3, subtle_slice_epochs=5, scan_epochs=2, mixed_epochs=1
    )

    names = ["t1_infarct_slices", "lesion_slices", "subtle_slices", "scans"]
    assert [s.name for s in stages[: mr.MASK_STAGES]] == names
    assert [s.name for s in stages[mr.MASK_STAGES :]] == ["mixed"]
    assert [s.epochs for s in stages] == [4, 3, 5, 2, 1]
    assert stages[0].data == (("infarct", "T1", CLEAR),)
    assert stages[1].data == lesion_slices.PAIR_KINDS
    assert stages[2].data == lesion_slices.SUBTLE_PAIR_KINDS
    assert stages[-1].learning_rate < stages[3].learning_rate
    assert stages[3].data == stages[4].data == (CLEAR, SUBTLE)
    assert mr._kinds(stages[0]) == "clear T1-like infarct"
    kinds = "FLAIR-like infarct, FLAIR-like tumour, T1-like infarct or T1-like tumour"
    assert mr._kinds(stages[1]) == f"clear {kinds}"
    assert mr._kinds(stages[2]) == f"clear or subtle {kinds}"


def test_a_kept_encoder_stays_as_it_was_while_what_follows_it_trains(tmp_path) -> None:
    """Its weights stay, and its batch normalisation stays frozen for any later training."""
    triplets = [p for seed in range(2) for p in _triplet(seed)]
    validation = on_grid(((p.volume, p.class_name) for p in _triplet(40)), GRID, "validation")
    run = StageRun(1, 1e-3, width=4, batch_size=3, seed=0, description="6", verbose=False)
    base = slices.train_slice_localised(
        lambda epoch: triplets, validation, GRID, run, architecture="slice_unet_gru"
    )
    encoder = slices.pixel_encoder(base.model)
    before = {id(w): w.numpy().copy() for layer in base.model.layers for w in layer.weights}

    scans = slices.train_slice_localised(
        lambda epoch: triplets, validation, GRID, run, base=base, name="scans", train_encoder=False
    )

    changed = {
        id(w)
        for layer in scans.model.layers
        for w in layer.weights
        if not np.allclose(w.numpy(), before[id(w)])
    }
    assert {layer.name for layer in encoder} >= {"enc0_conv", "dec0_bn", PIXEL_LOGITS_LAYER}
    assert "gru" not in {layer.name for layer in encoder}
    assert changed and not changed & {id(w) for layer in encoder for w in layer.weights}
    norms = {layer.name for layer in encoder if isinstance(layer, keras.layers.BatchNormalization)}
    assert norms and all(
        layer.trainable == (layer.name not in norms) for layer in scans.model.layers
    )

    save_bundle(scans, tmp_path / "scans")
    reloaded = load_bundle(tmp_path / "scans")
    statistics = [reloaded.model.get_layer(name).get_weights() for name in sorted(norms)]
    again = slices.train_slice_localised(
        lambda epoch: triplets, validation, GRID, run, base=reloaded, name="more"
    )
    for name, kept in zip(sorted(norms), statistics, strict=True):
        assert not again.model.get_layer(name).trainable
        for got, want in zip(again.model.get_layer(name).get_weights(), kept, strict=True):
            np.testing.assert_array_equal(got, want)


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
