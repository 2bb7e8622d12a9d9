"""The MR demo's first stages: balanced slices through lesions and the same slices of normal
heads, packed into pseudo-scans, train the per-pixel encoder alone."""

from __future__ import annotations

from dataclasses import replace

import keras
import numpy as np
from sklearn.metrics import roc_auc_score

from napari_scan_classifier.models.architectures import PIXEL_LOGITS_LAYER
from napari_scan_classifier.models.demo import lesion_slices
from napari_scan_classifier.models.demo.common import Grid, on_grid
from napari_scan_classifier.models.demo.mask_stage import StageRun, fresh_model
from napari_scan_classifier.models.demo.mr import CONSPICUOUS
from napari_scan_classifier.models.demo.slices import pixel_labelled
from napari_scan_classifier.phantoms import BRAIN_CLASSES, CLEAR, SUBTLE, make_brain_mr_phantom

GRID = Grid((8, 48, 48), (20.0, 4.5, 4.5), {"kind": "zscore", "mask": "head"}, BRAIN_CLASSES)


def _seed(phantom) -> int:
    return int(phantom.volume.metadata["series_description"].split()[-1][:-1])


def _contrast(phantom) -> str:
    return next(
        c for c in ("T1", "FLAIR") if f" {c} " in phantom.volume.metadata["series_description"]
    )


def test_pairs_cycle_through_the_kinds_half_t1_like_infarcts_each_beside_another_normal_head():
    pairs = list(lesion_slices.lesion_pairs(8, 100))
    only_infarcts = lesion_slices.lesion_pairs(2, 100, lesion_slices.T1_INFARCTS)

    kinds = [(lesioned.class_name, _contrast(lesioned)) for lesioned, _ in pairs]
    assert kinds == [(name, contrast) for name, contrast, _ in lesion_slices.PAIR_KINDS]
    assert kinds.count(("infarct", "T1")) == 4 and kinds.count(("tumour", "T1")) == 2
    for index, (lesioned, normal) in enumerate(pairs):
        assert normal.class_name == "normal" and _contrast(normal) == _contrast(lesioned)
        assert (_seed(lesioned), _seed(normal)) == (100 + index, 108 + index)
    assert [(p.class_name, _contrast(p)) for p, _ in only_infarcts] == [("infarct", "T1")] * 2


def test_subtle_pairs_draw_their_lesions_from_the_subtle_ranges_and_keep_clear_ones_beside():
    kinds = lesion_slices.SUBTLE_PAIR_KINDS
    pairs = list(lesion_slices.lesion_pairs(len(kinds), 300, kinds))

    assert {lesions for *_, lesions in kinds} == {SUBTLE, CLEAR}
    assert len(set(kinds)) == len(kinds) == 8
    for index, ((name, contrast, lesions), (lesioned, _)) in enumerate(
        zip(kinds, pairs, strict=True)
    ):
        expected = make_brain_mr_phantom(300 + index, name, lesions=lesions, contrast=contrast)
        np.testing.assert_array_equal(lesioned.lesion_mask, expected.lesion_mask)
        np.testing.assert_array_equal(lesioned.volume.voxels, expected.volume.voxels)
    sizes = [lesioned.lesion_mask.sum() for lesioned, _ in pairs]
    subtle, clear = (
        np.mean([n for (*_, k), n in zip(kinds, sizes, strict=True) if k == kind])
        for kind in (SUBTLE, CLEAR)
    )
    assert subtle < clear


def test_slices_through_each_lesion_come_with_the_same_slices_of_the_normal_head():
    pairs = list(lesion_slices.lesion_pairs(3, 7))

    data = lesion_slices.LesionSlices.of(pairs, GRID)

    expected_images, expected_labels = [], []
    for pair in pairs:
        x, _, voxels = pixel_labelled(pair, GRID)
        through = voxels[0].any(axis=(1, 2))
        assert 0 < through.sum() < GRID.input_shape[0]
        expected_images += [x[0, through], x[1, through]]
        expected_labels += [voxels[0, through], voxels[1, through]]
    np.testing.assert_array_equal(data.images, np.concatenate(expected_images))
    np.testing.assert_array_equal(data.labels, np.concatenate(expected_labels))
    lesion_slices_count = sum(len(labels) for labels in expected_labels[::2])
    assert (data.labels.max(axis=(1, 2)) > 0).sum() == lesion_slices_count == len(data.images) // 2


def test_packing_shuffles_every_slice_once_into_pseudo_scans_by_seed():
    images = np.arange(21, dtype=np.float32)[:, None, None] * np.ones((21, 4, 4), np.float32)
    labels = (np.arange(21)[:, None, None] % 3 * np.ones((21, 4, 4))).astype(np.int8)
    data = lesion_slices.LesionSlices(images, labels)

    x, targets = data.packed(4, seed=1)
    again, _ = data.packed(4, seed=1)
    other, _ = data.packed(4, seed=2)

    assert x.shape == (5, 4, 4, 4) and targets["pixels"].shape == (5, 4, 4, 4)
    assert len(set(x[:, :, 0, 0].ravel().tolist())) == 20  # one slice left out, none twice
    np.testing.assert_array_equal(targets["pixels"][..., 0, 0], x[..., 0, 0].astype(int) % 3)
    np.testing.assert_array_equal(targets["peaks"], targets["pixels"].max(axis=(2, 3)))
    np.testing.assert_array_equal(x, again)
    assert not np.array_equal(x, other)


def test_the_encoder_learns_lesion_pixels_and_leaves_the_scan_head_untouched():
    """Conspicuous FLAIR-like lesions, so that a tiny network learns them in a few epochs."""
    pairs = [
        (
            make_brain_mr_phantom(
                seed, BRAIN_CLASSES[1 + seed % 2], lesions=CONSPICUOUS, contrast="FLAIR"
            ),
            make_brain_mr_phantom(seed + 100, "normal", contrast="FLAIR"),
        )
        for seed in range(12)
    ]
    data = lesion_slices.LesionSlices.of(pairs, GRID)
    validation = on_grid(
        ((make_brain_mr_phantom(40 + i, n).volume, n) for i in range(2) for n in BRAIN_CLASSES),
        GRID,
        "validation",
    )
    run = StageRun(8, 3e-3, width=4, batch_size=1, seed=0, description="12 pairs", verbose=False)

    bundle = lesion_slices.train_lesion_slices(data, validation, GRID, run, name="first")

    untrained = fresh_model(lesion_slices.ARCHITECTURE, GRID, 4, 0)
    x, targets = data.packed(GRID.input_shape[0], seed=99)
    lesion = targets["pixels"].ravel() > 0

    def lesion_pixel_auc(model) -> float:
        pixels = keras.Model(model.input, model.get_layer(PIXEL_LOGITS_LAYER).output)
        logits = np.asarray(pixels(x[..., None]))
        return roc_auc_score(lesion, (logits[..., 1:].max(axis=-1) - logits[..., 0]).ravel())

    assert lesion_pixel_auc(untrained) < 0.65 < 0.75 < lesion_pixel_auc(bundle.model)
    for name in ("gru", "volume_logits", "slice_logits"):
        for trained, fresh in zip(
            bundle.model.get_layer(name).get_weights(),
            untrained.get_layer(name).get_weights(),
            strict=True,
        ):
            np.testing.assert_array_equal(trained, fresh)
    m = bundle.metadata
    assert (m.name, m.architecture, m.modality) == ("first", "slice_unet_gru", "MR")
    assert len(m.training["history"]["val_auc"]) == 8
    assert [s["name"] for s in m.training["stages"]] == ["first"]

    more = replace(run, epochs=1)
    following = lesion_slices.train_lesion_slices(
        data, validation, GRID, more, name="second", base=bundle
    )
    assert following.model is bundle.model  # continued, not a fresh network
    assert [s["name"] for s in following.metadata.training["stages"]] == ["first", "second"]
