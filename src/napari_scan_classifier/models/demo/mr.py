"""The bundled brain MR demo model, ``demo_mr_brain``: ``normal``, ``tumour`` or ``infarct``.

``python -m napari_scan_classifier.models.train_demo --model demo_mr_brain --out DIR`` trains a
``slice_unet_gru`` (a small U-Net on each axial slice, ending in per-pixel class logits, then a
bidirectional GRU across the slices) on
:func:`~napari_scan_classifier.phantoms.make_brain_mr_phantom` phantoms, in stages, each from the
one before:

1. **t1_infarct_slices** from scratch: the slice encoder alone learns, pixel by pixel, slices
   through clear T1-like infarcts beside the same slices of other normal heads (180 pairs, 18
   epochs; :mod:`.lesion_slices`);
2. **lesion_slices**: the same on slices through every lesion kind (360 pairs, half of them
   T1-like infarcts, 10 epochs);
3. **subtle_slices**: the same on slices through every lesion kind, subtle and clear in turn
   (360 pairs, 12 epochs);
4. **scans**: the encoder kept as it is, the GRU across slices learns whole scans from their
   scan and slice labels (:mod:`.slices`), on 360 fresh triplets each epoch, clear and subtle
   lesions in turn (10 epochs);
5. **mixed**: two epochs of scan labels alone, clear and subtle, through the same training
   pipeline as a user's fine-tuning, at a learning rate (1e-5) low enough to keep what the mask
   stages learned; it fits the calibration on the validation phantoms.

Why the encoder learns apart, on balanced slices: T1-like infarcts are 10-12 % darker than their
tissue, under a 5-20 % bias field. Every recipe that trained on whole scans left them at chance
(one-vs-rest AUC 0.59 clear for version 6, a ``slice_gru`` trained on slice labels; 0.52-0.54 for
this network with its per-pixel logits trained on the lesion masks voxel by voxel: it learnt
where infarcts lie, not what they look like), though an observer told where to look tells them
apart (AUC 0.99, see the README), and a 2D U-Net trained on balanced slices through them learnt
them (test AUC 0.97 by slice, 0.98 by head). Most slices and voxels of a scan hold no lesion;
balanced slices give the encoder the lesions to learn from. Why T1-like infarcts first: see
:mod:`.lesion_slices`. Why the encoder is kept in the scans stage: trained on whole scans it
lost what it had learnt of T1-like tumours (AUC by the head's highest logit 0.78 to 0.71 in 4
epochs).

Why subtle slices: until version 8 the encoder saw clear lesions only, and subtle ones stayed weak
(version 7: held-out macro AUC 0.687). From version 7's first two stages, 8 epochs of subtle and
clear pairs, then 6 of scans, gave 0.789 on subtle lesions and 0.989 on clear ones (version 7:
0.979). Twelve epochs of them took the head's highest pixel logit on 16 fresh triplets per contrast
from AUC 0.61 to 0.74 on subtle FLAIR-like infarcts, 0.66 to 0.72 on subtle FLAIR-like tumours and
0.66 to 0.75 on clear T1-like infarcts; subtle T1-like lesions stay near chance by that measure
(0.53 and 0.59). The scans stage was still learning after 6 epochs (validation AUC 0.899); after 10
it reached 0.928. Shipped as version 8: on 300 fresh phantoms per set, paired against version 7,
subtle lesions 0.849 against 0.697 (+0.112 to +0.193), clear ones 0.985 against 0.978 (-0.003 to
+0.015); subtle T1-like lesions remain the weak part (macro AUC 0.735, FLAIR-like 0.934).

Tried after version 8 and not adopted, each measured on 300 fresh phantoms per set after its
scans stage, paired against version 8 on the same phantoms: a stage of slices through subtle
T1-like lesions alone (180 pairs, 16 epochs) between the second and third stages, as T1-like
infarcts were learnt alone first, took the probe's subtle T1-like infarcts from 0.52 to 0.69, but
the network scored 0.824 on subtle lesions against 0.849 (T1-like 0.750 against 0.735, FLAIR-like
0.884 against 0.934); subtle T1-like pairs twice as often as the other subtle kinds in the third
stage scored 0.838 (T1-like 0.802, FLAIR-like 0.871). Both traded FLAIR-like lesions for T1-like
ones; clear lesions stayed at 0.978-0.991. 540 pairs in the third stage instead of 360, kinds as
they are, scored 0.854 (T1-like 0.744, FLAIR-like 0.934; difference +0.005, 95 % interval -0.018
to +0.028): not distinguishable from version 8, so not shipped as a new version.

Version 9 is version 8's network (the same weights) answering with the mean logits of the scan
and of its left-right mirror image (``test_time_mirror``), calibrated on that answer: on 300 fresh
phantoms per set, paired against version 8, subtle lesions 0.866 against 0.849 (+0.004 to
+0.031; T1-like 0.769, FLAIR-like 0.935), clear ones 0.991 against 0.985 (+0.002 to +0.011).
On 300 phantoms from yet other seeds it scores 0.818 on subtle lesions: sets of 300 differ by
that much. There, the 540-pair network with the mirror scored 0.848 (paired +0.007 to +0.052),
but 0.865 against 0.866 on the first set; the mean logits of it and version 9 scored 0.843, of
it and the network with subtle T1-like pairs twice as often 0.858: an ensemble gains little.
A grid of 36 slices of 4.33 mm instead of 24 of 6.5 (the same 156 mm; the recipe otherwise as it
is, from scratch) keeps small lesions from thinning out across thick slices. After its scans
stage, paired against version 9 on the same phantoms (each on its own grid, both mirrored,
uncalibrated): subtle 0.889 against 0.856 (+0.006 to +0.059) and 0.876 against 0.818 (+0.029 to
+0.087), T1-like 0.81-0.83 against 0.72-0.76; clear 0.997 against 0.994. Its full run's card:
subtle 0.870, clear 0.991, ECE 0.052 on both; but both sample maps fail their faithfulness check
(insertion minus deletion area -0.13 and -0.02), so it is not shipped yet. The check's fill of
many regions reads as a lesion to it: deleting the 30 regions the infarct map ranks first took
P(infarct) to 0.70, deleting 69 brought it back to 1.00. Blurred copies (the check's fill, as the
CT recipe has) in its scans stage alone, the encoder kept, moved the gaps at that stage from
-0.03 and 0.08 to 0.02 and 0.14 (validation AUC 0.919 against 0.929). Copies in every mask stage
did worse: validation AUC 0.865 after the scans stage, and the tumour sample read as normal. An
oracle map (the sample's lesion mask) passes on the candidate (gaps 0.12 and 0.32), so the tumour
failure is integrated gradients' own (5 of the 13 regions it ranks first touch the tumour, 118 of
4796 do); from the scan's blur, not its mean, it passes the infarct (0.43), not the tumour (0.02).
Grad-CAM on its last layer, 16 times higher inside the tumour than elsewhere, fails too (-0.16):
its tumour answer outlives the removal of the regions its maps rank first.

Why the last stage barely trains: version 5 followed its mask stage with 8 epochs on clear and
6 on mixed lesions at 5e-4 and 3e-4, on 360 phantoms each. They took the T1-like held-out macro
AUC of the mask stages' network from 0.73 back to 0.58; at 1e-4 they still traded subtle lesions
for clear ones (0.616 against 0.644).

Versions 3-6 were ``slice_gru`` (a CNN with a stride-2 first convolution on each slice, the
GRU across slices): scan labels alone (version 3: held-out macro AUC 0.859 clear, 0.566 subtle),
then slice labels from the lesion mask (4-6; version 6: 0.902 and 0.653, T1-like infarcts 0.59).
Tried on it and not adopted: labels per 8 x 8-pixel cell (:mod:`.slices`), more training on
T1-like scans (validation AUC flat at 0.79-0.84 for 20 epochs), a full-resolution stem (single
T1-like infarct slices: test AUC 0.59-0.66 against 0.54-0.59).

The scan stages' phantoms come in triplets (one per class) that share head, acquisition and
noise and differ only by the lesion, so only the lesion tells the classes apart. Validation (early
stopping, calibration) and the held-out tests are unpaired and drawn from other seeds. MR has no
absolute unit, so each scan is z-scored inside its head mask (the bundle's intensity recipe) and
training augments with smooth bias fields and a global gain on top of the phantoms' own.

The model sees axial slices of 96 x 96 pixels of 2.2 mm (the whole head in-plane) and 24 slices
of 6.5 mm. Finalisation is the CT demo's (:mod:`.common`): applicability check on training-like
and validation phantoms, the most faithful saliency method on validation phantoms with a lesion;
then the two sample MRs are classified and explained and the figures go into ``bundle.json`` and
the model card.
:func:`compare_architectures` measures ``slice_gru``, this architecture and ``cnn3d`` on the same
phantoms.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_scan_classifier.inference import classify
from napari_scan_classifier.models.bundle import Bundle, load_bundle, save_bundle
from napari_scan_classifier.models.demo import lesion_slices, slices
from napari_scan_classifier.models.demo.common import (
    SEED_RANGE,
    STAGES_FOLDER,
    Cases,
    Grid,
    Stage,
    add_applicability,
    add_saliency_choice,
    fmt,
    held_out_metrics,
    lineage,
    on_grid,
    pooled,
    printer,
    replace_section,
    shipped_version,
    train_stages,
    training_split,
)
from napari_scan_classifier.models.demo.lesion_slices import LesionSlices
from napari_scan_classifier.models.demo.mask_stage import StageRun
from napari_scan_classifier.phantoms import (
    BRAIN_CLASSES,
    CLEAR,
    SUBTLE,
    Lesions,
    Phantom,
    make_brain_mr_phantom,
    sample_mr_infarct_phantom,
    sample_mr_phantom,
)
from napari_scan_classifier.preprocess import head_mask
from napari_scan_classifier.saliency import saliency_map
from napari_scan_classifier.training import TrainingConfig, evaluate_bundle, train

DEMO_NAME = "demo_mr_brain"
BODY_REGION = "head"  # what the model is made for (bundle.json body_region)
ARCHITECTURE = lesion_slices.ARCHITECTURE
GRID = Grid((24, 96, 96), (6.5, 2.2, 2.2), {"kind": "zscore", "mask": "head"}, BRAIN_CLASSES)
DETECTOR_CASES = 240
VALIDATION_CASES = 96
SALIENCY_CASES = 4
SAMPLES = {"tumour": sample_mr_phantom, "infarct": sample_mr_infarct_phantom}
# Both held-out sets together: the validation's mix, which the calibration is fitted to.
POOLED = "clear_and_subtle"
COMPARISON_FILE = "architecture_comparison.json"
COMPARISON_LEARNING_RATE = 1e-3
INFARCT_EPOCHS = 18
SLICE_EPOCHS = 10
SUBTLE_SLICE_EPOCHS = 12
SCAN_EPOCHS = 10
MIXED_EPOCHS = 2
MASK_STAGES = 4  # the first stages, on lesion masks; the last on scan labels
STAGE_SEED_STEP = 40_000  # a scan-label stage k draws its phantoms from seed + k x this
BATCH_SIZE = 4  # twice the steps of 8 for the same time: from scratch, steps are what is short
# The architecture comparison's lesions: larger and with more contrast than CLEAR (from scratch on
# CLEAR, with scan labels, the network stayed near chance for 6 epochs of 150 cases).
CONSPICUOUS = Lesions(
    conspicuity=(1.5, 1.9), tumour_radius_mm=(12.0, 20.0), infarct_width=(0.8, 1.0)
)
Draw = Lesions | tuple[Lesions, str | None]  # a lesion range, and a fixed contrast or None


def triplet_phantoms(n: int, seed: int, lesions: Sequence[Draw] = (CLEAR,)) -> Iterator[Phantom]:
    """``n`` phantoms as triplets (normal, tumour, infarct) sharing head, acquisition and noise;
    the triplets cycle through ``lesions`` (each with the contrast it fixes, if any)."""
    for index in range(n // len(BRAIN_CLASSES)):
        kind, contrast = _split(lesions[index % len(lesions)])
        for name in BRAIN_CLASSES:
            yield make_brain_mr_phantom(seed + index, name, lesions=kind, contrast=contrast)


def _split(draw: Draw) -> tuple[Lesions, str | None]:
    return draw if isinstance(draw, tuple) else (draw, None)


def triplet_cases(n: int, seed: int, lesions: Sequence[Draw] = (CLEAR,)) -> Cases:
    """:func:`triplet_phantoms` as (volume, class) cases."""
    for phantom in triplet_phantoms(n, seed, lesions):
        yield phantom.volume, phantom.class_name


def unpaired_cases(n: int, seed: int, lesions: Sequence[Lesions] = (CLEAR,)) -> Cases:
    """``n`` cases of the three classes in turn, each its own head and acquisition."""
    for index in range(n):
        name = BRAIN_CLASSES[index % len(BRAIN_CLASSES)]
        kind = lesions[(index // len(BRAIN_CLASSES)) % len(lesions)]
        yield make_brain_mr_phantom(seed + index, name, lesions=kind).volume, name


_KIND_NAMES = {CONSPICUOUS: "conspicuous", CLEAR: "clear", SUBTLE: "subtle"}


def demo_stages(
    infarct_epochs: int,
    slice_epochs: int,
    subtle_slice_epochs: int,
    scan_epochs: int,
    mixed_epochs: int,
) -> list[Stage]:
    """The recipe (see the module docstring); each stage's data: the lesion kinds its pairs
    cycle through (slice stages), or the lesion ranges (and contrasts) its triplets cycle
    through, and whether it augments."""
    return [
        Stage("t1_infarct_slices", infarct_epochs, 1e-3, lesion_slices.T1_INFARCTS),
        Stage("lesion_slices", slice_epochs, 1e-3, lesion_slices.PAIR_KINDS),
        Stage("subtle_slices", subtle_slice_epochs, 1e-3, lesion_slices.SUBTLE_PAIR_KINDS),
        Stage("scans", scan_epochs, 1e-3, (CLEAR, SUBTLE), {"augment": False}),
        Stage("mixed", mixed_epochs, 1e-5, (CLEAR, SUBTLE)),
    ]


def _seeds(seed: int) -> dict[str, int]:
    """Disjoint seed ranges: stage k trains on seeds from ``stage + 40_000 k``."""
    return {
        "validation": seed + SEED_RANGE,
        "clear": seed + 2 * SEED_RANGE,
        "subtle": seed + 3 * SEED_RANGE,
    }


def build_mr_demo(
    out: str | Path,
    *,
    cases: int = 360,
    val_cases: int = VALIDATION_CASES,
    test_cases: int = 150,
    infarct_epochs: int = INFARCT_EPOCHS,
    slice_epochs: int = SLICE_EPOCHS,
    subtle_slice_epochs: int = SUBTLE_SLICE_EPOCHS,
    scan_epochs: int = SCAN_EPOCHS,
    mixed_epochs: int = MIXED_EPOCHS,
    width: int = 16,
    batch_size: int = BATCH_SIZE,
    seed: int = 2025,
    comparison: str | Path | None = None,
    verbose: bool = True,
) -> Path:
    """Train the stages, measure, finalise and save the demo bundle as ``out/demo_mr_brain``;
    ``comparison``: a :func:`compare_architectures` JSON whose figures go into the card."""
    target = Path(out) / DEMO_NAME
    if target.exists():
        raise FileExistsError(f"{target} exists; choose another --out (models are never replaced)")
    started = time.perf_counter()
    seeds = _seeds(seed)
    validation_cases = unpaired_cases(val_cases, seeds["validation"], (CLEAR, SUBTLE))
    validation = on_grid(validation_cases, GRID, "validation")
    config = {**_config(width, batch_size, seed), "test_time_mirror": True}
    stages = demo_stages(
        infarct_epochs, slice_epochs, subtle_slice_epochs, scan_epochs, mixed_epochs
    )
    checkpoints = Path(out) / STAGES_FOLDER
    _train_mask_stages(stages[:MASK_STAGES], checkpoints, validation, cases, config, verbose)

    def stage_data(index: int, stage: Stage) -> Any:
        description = _stage_description(cases, stage)
        phantoms = triplet_cases(cases, seed + STAGE_SEED_STEP * index, stage.data)
        data = on_grid(phantoms, GRID, description)
        return training_split(data, validation)

    result = train_stages(stages, stage_data, config, checkpoints, verbose)
    bundle = result.bundle
    tests = {
        "clear": unpaired_cases(test_cases, seeds["clear"], (CLEAR,)),
        "subtle": unpaired_cases(test_cases, seeds["subtle"], (SUBTLE,)),
    }
    test_data = {name: on_grid(t, GRID, name) for name, t in tests.items()}
    test_data[POOLED] = pooled(list(test_data.values()), "clear and subtle")
    held_out = held_out_metrics(
        {name: evaluate_bundle(bundle, data) for name, data in test_data.items()}
    )
    minutes = (time.perf_counter() - started) / 60
    compared = json.loads(Path(comparison).read_text()) if comparison else None
    _describe(bundle, held_out, minutes, compared)
    finalise_mr(bundle, seed=seed, cases=cases, val_cases=val_cases)
    version = max(bundle.metadata.version, shipped_version(DEMO_NAME) + 1)
    bundle.metadata = replace(bundle.metadata, version=version)
    path = result.save(target)
    if verbose:
        figures = bundle.metadata.training["samples"]
        print(
            f"held-out macro AUC {held_out['clear']['auc']:.3f} (clear), "
            f"{held_out['subtle']['auc']:.3f} (subtle); ECE {held_out['clear']['ece']:.3f}, "
            f"{held_out['subtle']['ece']:.3f}, {held_out[POOLED]['ece']:.3f} (both); "
            f"samples {json.dumps(figures)}; "
            f"{minutes:.1f} min training -> {path}",
            flush=True,
        )
    return path


def _train_mask_stages(
    stages: Sequence[Stage],
    checkpoints: Path,
    validation: Any,
    cases: int,
    config: dict[str, Any],
    verbose: bool,
) -> None:
    """Train (each from the one before) and keep the mask stages not yet kept: the encoder on
    balanced lesion slices (``cases // 2`` pairs, then ``cases`` pairs twice), then the network
    after it on whole scans, fresh each epoch; no two of them share a seed."""
    seed, width, batch_size = config["seed"], config["width"], config["batch_size"]
    *slice_stages, scans = stages
    base: Bundle | None = None
    start = 0
    for stage, pairs in zip(slice_stages, (cases // 2, cases, cases), strict=True):
        kept = checkpoints / stage.name
        if not kept.is_dir():
            description = f"{pairs} pairs of a normal head and one with a {_kinds(stage)}"
            run = StageRun.of(stage, width, batch_size, seed, description, verbose)
            data = LesionSlices.of(
                lesion_slices.lesion_pairs(pairs, seed + start, stage.data), GRID
            )
            base = lesion_slices.train_lesion_slices(
                data, validation, GRID, run, name=stage.name, base=base
            )
            save_bundle(base, kept)
        else:
            base = load_bundle(kept)
        start += 2 * pairs
    if (checkpoints / scans.name).is_dir():
        return
    description = _stage_description(cases, scans, fresh=True)
    run = StageRun.of(scans, width, batch_size, seed, description, verbose)
    phantoms = _fresh_phantoms(cases, seed, scans, start=start)
    bundle = slices.train_slice_localised(
        phantoms, validation, GRID, run, base=base, name=scans.name, train_encoder=False
    )
    save_bundle(bundle, checkpoints / scans.name)


def _kinds(stage: Stage) -> str:
    """The lesions of a slice stage's pairs in words, e.g. "clear T1-like infarct"."""
    names = sorted({f"{contrast}-like {name}" for name, contrast, _ in stage.data})
    clarity = " or ".join(sorted({_KIND_NAMES[lesions] for *_, lesions in stage.data}))
    kinds = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    return f"{clarity} {kinds}"


def _fresh_phantoms(
    cases: int, seed: int, stage: Stage, start: int = 0
) -> Callable[[int], Iterator[Phantom]]:
    """Each epoch's own ``cases`` phantoms, from seeds after the epoch before's, the first at
    ``seed + start``, all below the validation seeds."""
    triplets = cases // len(BRAIN_CLASSES)
    if start + stage.epochs * triplets > SEED_RANGE:
        raise ValueError(
            f"{stage.epochs} epochs of {cases} fresh phantoms from seed +{start} need more than "
            f"the {SEED_RANGE} training seeds of the mask stages: use fewer epochs or cases"
        )
    return lambda epoch: triplet_phantoms(cases, seed + start + epoch * triplets, stage.data)


def _stage_description(cases: int, stage: Stage, *, fresh: bool = False) -> str:
    names = [_draw_name(draw) for draw in stage.data]
    kinds = " and ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} and {names[-1]}"
    if fresh:
        return (
            f"{cases} fresh brain MR phantoms each epoch ({cases * stage.epochs} in all) in "
            f"triplets, {kinds} lesions"
        )
    return f"{cases} brain MR phantoms in triplets, {kinds} lesions"


def _draw_name(draw: Draw) -> str:
    kind, contrast = _split(draw)
    return _KIND_NAMES[kind] if contrast is None else f"{_KIND_NAMES[kind]} {contrast}-like"


def _config(width: int, batch_size: int, seed: int, architecture: str = ARCHITECTURE) -> dict:
    return {
        "architecture": architecture,
        "input_shape": GRID.input_shape,
        "target_spacing_mm": GRID.spacing,
        "modality": "MR",
        "intensity": dict(GRID.intensity),
        "width": width,
        "classes": BRAIN_CLASSES,
        "batch_size": batch_size,
        "augment": True,
        "seed": seed,
        "name": DEMO_NAME,
    }


def finalise_mr(bundle: Bundle, *, seed: int, cases: int, val_cases: int) -> None:
    """Body region, applicability check, saliency choice and the sample figures, into
    ``bundle``."""
    bundle.metadata = replace(bundle.metadata, body_region=BODY_REGION)
    seeds = _seeds(seed)
    stages = demo_stages(1, 1, 1, 1, 1)
    last = stages[-1]  # the detector is fitted on that stage's training phantoms
    training = triplet_cases(cases, seed + STAGE_SEED_STEP * (len(stages) - 1), last.data)
    detector_cases = (case for _, case in zip(range(DETECTOR_CASES), training, strict=False))
    validation = unpaired_cases(val_cases, seeds["validation"], (CLEAR, SUBTLE))
    inputs = "MR modality; anatomy-like texture"
    add_applicability(bundle, GRID, detector_cases, validation, inputs)
    lesions = (
        volume
        for volume, label in unpaired_cases(val_cases, seeds["validation"], (CLEAR,))
        if label != "normal"
    )
    volumes = [volume for _, volume in zip(range(SALIENCY_CASES), lesions, strict=False)]
    add_saliency_choice(bundle, volumes, None)
    _record_samples(bundle)


def sample_figures(bundle: Bundle, phantom: Phantom) -> dict[str, Any]:
    """One sample MR through the bundle: its class, probabilities, verdict, and its default
    saliency map's faithfulness and mean inside the lesion vs elsewhere in the head."""
    prediction = classify(phantom.volume, bundle, uncertainty_passes=1, method="none")
    explanation = saliency_map(
        phantom.volume, bundle, target_class=prediction.predicted_class, faithfulness=True
    )
    lesion = phantom.lesion_mask.astype(bool)
    head = head_mask(phantom.volume.voxels.astype(np.float32)) & ~lesion
    inside, outside = (
        float(explanation.values[lesion].mean()),
        float(explanation.values[head].mean()),
    )
    return {
        "truth": phantom.class_name,
        "predicted": prediction.predicted_class,
        "probabilities": {k: round(v, 4) for k, v in prediction.probabilities.items()},
        "in_distribution": bool(prediction.ood is None or prediction.ood.in_distribution),
        "saliency_method": explanation.method,
        "faithfulness_passed": bool(explanation.faithfulness and explanation.faithfulness.passed),
        "saliency_inside_outside": [round(inside, 4), round(outside, 4)],
        "saliency_ratio": round(inside / outside, 2) if outside > 0 else None,
    }


def _record_samples(bundle: Bundle) -> None:
    m = bundle.metadata
    figures = {name: sample_figures(bundle, make()) for name, make in SAMPLES.items()}
    lines = []
    for name, f in figures.items():
        p = f["probabilities"][f["predicted"]]
        lines.append(
            f"Sample MR with {'a' if name == 'tumour' else 'an'} {name}: classified "
            f"`{f['predicted']}` (P = {p:.2f}); {f['saliency_method'].replace('_', ' ')} map "
            f"{'passed' if f['faithfulness_passed'] else 'failed'} its faithfulness check and "
            f"averages {f['saliency_inside_outside'][0]:.2f} inside the lesion, "
            f"{f['saliency_inside_outside'][1]:.2f} elsewhere in the head "
            f"(x{f['saliency_ratio']})."
        )
    text = "\n\n".join(textwrap.fill(line, 100) for line in lines)
    card = replace_section(m.model_card, "\n## Sample scans\n", text)
    bundle.metadata = replace(m, training={**m.training, "samples": figures}, model_card=card)


def _describe(
    bundle: Bundle,
    held_out: dict[str, dict[str, Any]],
    minutes: float,
    compared: dict[str, Any] | None,
) -> None:
    """The honest model card and the held-out figures, into the bundle's metadata."""
    m = bundle.metadata
    val = m.training["metrics"]["validation"]
    clear, subtle, both = held_out["clear"], held_out["subtle"], held_out[POOLED]
    grid = "x".join(map(str, m.input_shape))
    card = f"""# Demo brain MR classifier (synthetic data only)

**A demonstration, not a diagnostic device.** Trained only on computer-generated brain MR
phantoms; it has never seen a patient scan and its output on real MR means nothing clinically.

- **Task**: whole-scan classification into `normal`, `tumour` (a mass with oedema, some with an
  enhancing rim) and `infarct` (a wedge of cortex and white matter in one cerebral artery's
  territory: anterior, middle or posterior).
- **Input**: MR of the head, T1-like or FLAIR-like, any gain: z-scored inside the head mask,
  resampled to {grid} voxels of {" x ".join(f"{s:g}" for s in m.target_spacing_mm)} mm.
- **Network**: `{m.architecture}` (a small U-Net on each axial slice, ending in per-pixel class
  logits, then a bidirectional GRU across the slices), made by
  `python -m napari_scan_classifier.models.train_demo --model demo_mr_brain` ({minutes:.0f} min
  on a 2-core CPU for its last run; a run resumes after the stages it kept; augmentation with
  bias fields, gain, flips and rotations in the scan-label stage). It answers with the mean
  logits of the scan and of its left-right mirror image, and its maps explain that answer.
- **Training data**: phantoms from `napari_scan_classifier.phantoms.make_brain_mr_phantom`: for
  the slice stages, pairs of a head with a lesion and another normal head of its contrast; for
  the scan stages, triplets that share head, acquisition and noise and differ only by the
  lesion; fresh phantoms for each stage, each starting from the one before:
{lineage(bundle)}
- **Validation** ({val["n"]} unpaired phantoms, clear and subtle lesions): macro AUC
  {fmt(val["auc"])}, accuracy {fmt(val["accuracy"])}, ECE {fmt(val["ece"])} after calibration.
- **Held-out test, clear lesions** ({clear["n"]} phantoms from other seeds): macro AUC
  {fmt(clear["auc"])}, accuracy {fmt(clear["accuracy"])}, ECE {fmt(clear["ece"])}.
- **Held-out test, subtle lesions** ({subtle["n"]} phantoms: tumours of 5-9 mm, narrow
  infarcts, 0.35-0.6 x the contrast): macro AUC {fmt(subtle["auc"])}, accuracy
  {fmt(subtle["accuracy"])}, ECE {fmt(subtle["ece"])}.
- **Held-out test, clear and subtle together** ({both["n"]} phantoms, the validation's mix, which
  the calibration is fitted to): macro AUC {fmt(both["auc"])}, accuracy
  {fmt(both["accuracy"])}, ECE {fmt(both["ece"])}. The calibration cannot suit each kind apart:
  the network is surer of clear lesions than of subtle ones, but not by as much as it should be.
- **Limits**: trained on axial phantoms (a coronal or sagittal series is read in world order, as
  axial slices); phantom anatomy is simple. Use it to try the plugin, then fine-tune on your own
  annotated cases.
"""
    if compared:
        card += "\n## Architecture comparison\n\n" + textwrap.fill(_comparison_text(compared), 100)
        card += "\n"
    training = {
        **m.training,
        "metrics": {**m.training["metrics"], **{f"held_out_{k}": v for k, v in held_out.items()}},
        "training_minutes": round(minutes, 1),
    }
    if compared:
        training["architecture_comparison"] = compared
    bundle.metadata = replace(
        m,
        description="Demo: synthetic brain MR phantoms, normal vs tumour vs infarct "
        "(not for diagnosis)",
        model_card=card,
        training=training,
    )


def _comparison_text(compared: dict[str, Any]) -> str:
    parts = [
        f"`{name}` macro AUC {fmt(r['clear']['auc'])} clear, {fmt(r['subtle']['auc'])} subtle "
        f"({r['minutes']:.0f} min)"
        for name, r in compared["results"].items()
    ]
    return (
        f"Measured at small scale on the same phantoms ({compared['cases']} training phantoms in "
        f"triplets, {compared['epochs']} epochs, {compared['test_cases']} held-out phantoms "
        f"each clear and subtle): {'; '.join(parts)}."
    )


def compare_architectures(
    out: str | Path,
    *,
    cases: int = 180,
    epochs: int = 5,
    test_cases: int = 60,
    seed: int = 2025,
    architectures: Sequence[str] = ("slice_gru", ARCHITECTURE, "cnn3d"),
    verbose: bool = True,
) -> Path:
    """Train each architecture on conspicuous and clear triplets with scan labels only (same
    settings and seed) and measure it on the same held-out phantoms; writes
    ``out/architecture_comparison.json``."""
    seeds = _seeds(seed)
    validation = on_grid(
        unpaired_cases(VALIDATION_CASES // 2, seeds["validation"], (CLEAR,)), GRID, "val"
    )
    lesions = (CONSPICUOUS, CLEAR)
    training = on_grid(triplet_cases(cases, seed, lesions), GRID, "conspicuous triplets")
    data = training_split(training, validation)
    tests = {
        "clear": on_grid(unpaired_cases(test_cases, seeds["clear"], (CLEAR,)), GRID, "clear"),
        "subtle": on_grid(unpaired_cases(test_cases, seeds["subtle"], (SUBTLE,)), GRID, "subtle"),
    }
    results = {}
    for name in architectures:
        started = time.perf_counter()
        settings = {**_config(16, BATCH_SIZE, seed, name), "augment": False}
        config = TrainingConfig(
            **settings, epochs=epochs, learning_rate=COMPARISON_LEARNING_RATE, patience=epochs
        )
        bundle = train(data, config, progress=printer(verbose, name)).bundle
        minutes = (time.perf_counter() - started) / 60
        results[name] = {
            **held_out_metrics({k: evaluate_bundle(bundle, t) for k, t in tests.items()}),
            "minutes": round(minutes, 1),
        }
        if verbose:
            print(name, json.dumps(results[name]), flush=True)
    record = {"cases": cases, "epochs": epochs, "test_cases": test_cases, "results": results}
    path = Path(out) / COMPARISON_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2))
    return path
