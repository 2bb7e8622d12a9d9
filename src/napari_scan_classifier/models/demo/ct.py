"""The bundled CT demo model, reproducibly: ``python -m napari_scan_classifier.models.train_demo
--out DIR`` writes ``DIR/demo_ct_lesion``.

The demo model tells synthetic CT phantoms with clear lesions (6-20 mm radius, 35-120 HU against
the organ, which takes in the sample CT phantom's 12-18 mm, 60-90 HU) from phantoms without. It goes
through the same :func:`~napari_scan_classifier.training.train` as a user's training, in stages,
each on fresh phantoms and starting from the stage before (:func:`demo_stages`):

1. **Warm-up** (version 1): from scratch on conspicuous lesions, 10-20 mm, 60-120 HU.
2. **Fine-tune** (version 2) on the clear lesions above, in the larger of the two fields of view
   (the sample scan's), where lesions are smallest on the model grid.
3. **Polish** (version 3, shipped) on clear lesions in both fields of view, at the fine-tune's
   learning rate: after stage 2 the validation AUC was still rising and the training loss falling.

It is then measured on held-out phantoms with clear lesions, on held-out
:func:`~napari_scan_classifier.phantoms.make_cases` phantoms (subtle lesions: 5-15 mm, 20-60 HU)
and on the sample CT phantom, and all of it goes into the model card. Stages 1 and 2 are kept in
``DIR/stages``, and a rerun into the same ``DIR`` resumes after the last one kept.

**Finalise** (``--finalise``; also, but for the recalibration that training already does, the
last step of a full run): the temperature and class bias are refitted on the validation
phantoms, the saliency method that measures most faithful on six of them with a lesion becomes
the bundle's default, and the applicability check of
:mod:`~napari_scan_classifier.applicability` is fitted on training-like phantoms (the polish
stage's) and the validation phantoms: input-check ranges (field of view, spacing, HU percentiles,
texture, body region) and the feature detector with its threshold for a 5 % false-abstention
rate. Run on an existing bundle (default: the shipped one), it writes the next version with the
same weights: ``python -m napari_scan_classifier.models.train_demo --finalise --out DIR``.

Why this way (48^3 grid, 2 CPU cores): started cold on ``make_cases``' subtle lesions, or on the
clear range, the network stayed at chance (training loss at log 2) for 12-15 epochs, with global
average or global max pooling alike; started on conspicuous lesions it took off after 6-8 epochs.
Fine-tuned from there on subtle lesions only, it lost what it had learnt, so the model targets
clear lesions and leaves subtle ones to fine-tuning with more data.

Training phantoms come in pairs that share anatomy and noise and differ only by the lesions, so
the network cannot tell the classes apart by the body; validation and tests are unpaired, from
other seeds. Augmentation is off: within this budget it slowed learning more than it helped. The
grid stretches the whole scan (``target_spacing_mm=None``), so the 72 x 128 x 128 sample scan and
a 512 x 512 x 300 clinical CT both fit it whole; phantoms come in two fields of view. Everything
is seeded: the same arguments give the same phantoms, splits and weights (up to the last bits of
TensorFlow's CPU kernels).
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import keras
import numpy as np

from napari_scan_classifier import phantoms
from napari_scan_classifier.applicability import DEFAULT_FALSE_ABSTENTION
from napari_scan_classifier.datasets import LabelledData
from napari_scan_classifier.evaluation import EvaluationReport
from napari_scan_classifier.models.bundle import Bundle, load_bundle, save_bundle
from napari_scan_classifier.models.bundled import bundled_model_path
from napari_scan_classifier.models.demo import common
from napari_scan_classifier.models.demo.common import (
    STAGES_FOLDER,
    Cases,
    Stage,
    fmt,
    held_out_metrics,
    lineage,
    span,
    train_stages,
    training_split,
)
from napari_scan_classifier.preprocess import prepare
from napari_scan_classifier.saliency import grad_cam
from napari_scan_classifier.training import (
    TrainingResult,
    evaluate_bundle,
    recalibrate_bundle,
)
from napari_scan_classifier.volume import Volume

DEMO_NAME = "demo_ct_lesion"
BODY_REGION = "abdomen"  # the phantoms: chest/abdomen CT, read as abdomen (their BodyPartExamined)
POLISH_STAGE = 2  # index of the last stage: its phantoms stand for the training data
DETECTOR_CASES = 240  # training-like phantoms the applicability detector is fitted on
VALIDATION_CASES = 96  # validation phantoms: calibration, detector threshold, saliency choice
SALIENCY_CASES = 6  # validation phantoms with a lesion the saliency methods are measured on
# Phantom fields of view: the make_cases default and the sample scan's.
PHANTOM_SHAPES = ((64, 96, 96), (72, 128, 128))
SPACING = (2.5, 1.5, 1.5)
INTENSITY = {"kind": "ct_window", "center": 50.0, "width": 250.0}  # abdominal soft tissue
# Warm-up lesions, then the target ones: clear lesions that take in the sample CT phantom's.
WARMUP_LESIONS = {"lesion_radius_mm": (10.0, 20.0), "lesion_contrast_hu": (60.0, 120.0)}
CLEAR_LESIONS = {"lesion_radius_mm": (6.0, 20.0), "lesion_contrast_hu": (35.0, 120.0)}
# 48^3 trains several times faster per case than 28^3 or 32^3 on a CPU (TF 2.21), and keeps a
# 5 mm-radius lesion over two voxels across in a 190 mm field of view.
INPUT_SHAPE = (48, 48, 48)
# Grad-CAM on block2 (a 6^3 map on the 48^3 grid) rather than the architecture's default, the last
# block (3^3): on the sample CT phantom the mean block3 map was lower inside the lesions than
# outside (0.30 vs 0.47), block2's was higher (0.64 vs 0.26).
GRADCAM_LAYER = "block2_relu"
INPUTS = "CT modality; Hounsfield values, with air in the field of view; anatomy-like texture"
Lesions = dict[str, tuple[float, float]]


def paired_cases(
    n: int, seed: int, shapes: Sequence[tuple[int, int, int]], lesions: Lesions = CLEAR_LESIONS
) -> Cases:
    """``n`` cases as pairs with and without ``lesions``, each pair sharing its anatomy."""
    for index in range(n // 2):
        for label in (0, 1):
            yield _phantom(seed + index, label, shapes[index % len(shapes)], lesions)


def clear_cases(n: int, seed: int, shapes: Sequence[tuple[int, int, int]]) -> Cases:
    """``n`` unpaired cases, every other one with clear lesions, each its own anatomy."""
    for index in range(n):
        shape = shapes[(index // 2) % len(shapes)]
        yield _phantom(seed + index, index % 2, shape, CLEAR_LESIONS)


def make_cases(n: int, seed: int, shapes: Sequence[tuple[int, int, int]]) -> Cases:
    """``n`` unpaired ``phantoms.make_cases`` cases, half with lesions, spread over ``shapes``."""
    for index, shape in enumerate(shapes):
        count = n // len(shapes) + (index < n % len(shapes))
        for case in phantoms.make_cases(count, seed + index, 0.5, "CT", shape, SPACING):
            yield case.volume, case.class_name


def _phantom(
    seed: int, label: int, shape: tuple[int, int, int], lesions: Lesions
) -> tuple[Volume, str]:
    case = phantoms.make_ct_phantom(seed, shape, SPACING, None if label else 0, **lesions)
    return case.volume, phantoms.CLASS_NAMES[case.label]


def grid(input_shape: Sequence[int]) -> common.Grid:
    """The demo's phantoms on a model grid of ``input_shape``: the whole scan stretched."""
    shape = tuple(int(n) for n in input_shape)
    return common.Grid(shape, None, INTENSITY, phantoms.CLASS_NAMES)  # type: ignore[arg-type]


def on_grid(cases: Cases, input_shape: Sequence[int], description: str) -> LabelledData:
    """Cases prepared on the model grid, with the demo's class order."""
    return common.on_grid(cases, grid(input_shape), description)


def sample_lesion_probability(bundle: Bundle) -> float:
    """The calibrated probability of 'lesion' for the sample CT phantom (which has two)."""
    m = bundle.metadata
    array, _grid = prepare(
        phantoms.sample_ct_phantom().volume, m.input_shape, m.target_spacing_mm, m.intensity
    )
    logits = keras.ops.convert_to_numpy(
        bundle.model(array[None, ..., None], training=False)["volume"]
    )
    probabilities = m.probabilities(logits.astype(float))
    return float(probabilities[0, m.classes.index("lesion")])


def sample_saliency_contrast(bundle: Bundle) -> tuple[float, float]:
    """Mean Grad-CAM of 'lesion' inside and outside the sample CT phantom's lesions: does the
    explanation point at them?"""
    phantom = phantoms.sample_ct_phantom()
    inside = np.asarray(phantom.lesion_mask).astype(bool)
    values = grad_cam(phantom.volume, bundle, target_class="lesion").values
    return float(values[inside].mean()), float(values[~inside].mean())


def demo_stages(warmup_epochs: int, epochs: int, polish_epochs: int) -> list[Stage]:
    """The recipe (see the module docstring); each stage's data: its lesions and whether only
    the largest field of view is used."""
    return [
        Stage("warm-up", warmup_epochs, 1e-3, (WARMUP_LESIONS, False)),
        Stage("fine-tune", epochs, 3e-4, (CLEAR_LESIONS, True)),
        Stage("polish", polish_epochs, 3e-4, (CLEAR_LESIONS, False)),
    ]


def build_demo(
    out: str | Path,
    *,
    cases: int = 480,
    val_cases: int = VALIDATION_CASES,
    test_cases: int = 100,
    warmup_epochs: int = 30,
    epochs: int = 15,
    polish_epochs: int = 20,
    input_shape: tuple[int, int, int] = INPUT_SHAPE,
    shapes: Sequence[tuple[int, int, int]] = PHANTOM_SHAPES,
    width: int = 16,
    batch_size: int = 8,
    seed: int = 2024,
    verbose: bool = True,
) -> Path:
    """Train the stages, measure and save the demo bundle as ``out/demo_ct_lesion``.

    Every stage but the last is kept in ``out/stages/<name>``; a rerun into the same ``out``
    resumes after the last stage kept there.
    """
    target = Path(out) / DEMO_NAME
    if target.exists():
        raise FileExistsError(f"{target} exists; choose another --out (models are never replaced)")
    started = time.perf_counter()
    common_config = {
        "input_shape": input_shape,
        "target_spacing_mm": None,
        "intensity": dict(INTENSITY),
        "width": width,
        "classes": phantoms.CLASS_NAMES,
        "batch_size": batch_size,
        "augment": False,
        "seed": seed,
        "name": DEMO_NAME,
    }
    validation = on_grid(clear_cases(val_cases, seed + 10_000, shapes), input_shape, "validation")

    def stage_data(index: int, stage: Stage) -> LabelledData:
        lesions, largest_only = stage.data
        fields = [_largest(shapes)] if largest_only else list(shapes)
        return _paired_data(cases, seed + 40_000 * index, fields, lesions, input_shape, validation)

    stages = demo_stages(warmup_epochs, epochs, polish_epochs)
    checkpoints = Path(out) / STAGES_FOLDER
    result = train_stages(stages, stage_data, common_config, checkpoints, verbose)
    tests = {
        "clear": clear_cases(test_cases, seed + 20_000, shapes),
        "make_cases": make_cases(test_cases, seed + 30_000, shapes),
    }
    held_out = {
        name: evaluate_bundle(result.bundle, on_grid(test, input_shape, name))
        for name, test in tests.items()
    }
    result.bundle.metadata = replace(
        result.bundle.metadata, gradcam_layer=GRADCAM_LAYER, body_region=BODY_REGION
    )
    sample = sample_lesion_probability(result.bundle)
    saliency = sample_saliency_contrast(result.bundle)
    minutes = (time.perf_counter() - started) / 60
    _describe(result, held_out, (sample, *saliency), shapes, minutes)
    add_applicability(
        result.bundle, seed=seed, val_cases=val_cases, shapes=shapes, training_cases=cases
    )
    add_saliency_choice(result.bundle, seed=seed)
    path = result.save(target)
    if verbose:
        print(
            f"held-out AUC {held_out['clear'].auc:.3f} (clear lesions), "
            f"{held_out['make_cases'].auc:.3f} (make_cases); sample CT P(lesion) {sample:.3f}, "
            f"Grad-CAM {saliency[0]:.2f} in its lesions, {saliency[1]:.2f} outside; "
            f"{minutes:.1f} min -> {path}"
        )
    return path


def add_applicability(
    bundle: Bundle,
    *,
    seed: int = 2024,
    val_cases: int = VALIDATION_CASES,
    shapes: Sequence[tuple[int, int, int]] = PHANTOM_SHAPES,
    training_cases: int = 480,
    detector_cases: int = DETECTOR_CASES,
    rate: float = DEFAULT_FALSE_ABSTENTION,
) -> None:
    """Fit the applicability check (input ranges and feature detector) into ``bundle``: on the
    first ``detector_cases`` phantoms of the polish stage and on the validation phantoms, the
    same seeds :func:`build_demo` trained and validated with."""
    train_all = paired_cases(training_cases, seed + 40_000 * POLISH_STAGE, shapes, CLEAR_LESIONS)
    training = (case for _, case in zip(range(detector_cases), train_all, strict=False))
    validation = clear_cases(val_cases, seed + 10_000, shapes)
    grid_of = grid(bundle.metadata.input_shape)
    common.add_applicability(bundle, grid_of, training, validation, INPUTS, rate=rate)


def finalise(
    out: str | Path,
    source: str | Path | None = None,
    *,
    seed: int = 2024,
    verbose: bool = True,
) -> Path:
    """Write ``source`` (default: the shipped demo bundle) as its next version with the
    applicability check fitted (see the module doc) into ``out/demo_ct_lesion-v<version>``;
    the plots travel with it."""
    folder = Path(source) if source is not None else bundled_model_path()
    base = load_bundle(folder)
    validation = clear_cases(VALIDATION_CASES, seed + 10_000, PHANTOM_SHAPES)
    bundle = recalibrate_bundle(base, on_grid(validation, base.metadata.input_shape, "validation"))
    bundle.metadata = replace(bundle.metadata, body_region=BODY_REGION)
    add_applicability(bundle, seed=seed)
    add_saliency_choice(bundle, seed=seed)
    _record_recalibration(bundle)
    plots = {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}
    path = save_bundle(
        bundle, Path(out) / f"{DEMO_NAME}-v{bundle.metadata.version}", extra_files=plots
    )
    if verbose:
        m = bundle.metadata
        info = m.applicability["detector"]
        print(
            f"calibration: temperature {m.temperature:.3f}, class bias {m.class_bias}; "
            f"applicability: threshold {info['threshold']:.3f} on {info['n_validation']} "
            f"validation phantoms ({info['validation_false_abstention']:.1%} turned away); "
            f"saliency default: {m.saliency['method']} {m.saliency.get('layer') or ''} "
            f"-> {path}"
        )
    return path


def _record_recalibration(bundle: Bundle) -> None:
    """Refresh the sample CT's probability and add the calibration and saliency choice to the
    model card, so that what the card and tests quote is what the user sees."""
    m = bundle.metadata
    training = {
        **m.training,
        "sample_ct_phantom_p_lesion": round(sample_lesion_probability(bundle), 4),
    }
    after = m.calibration["recalibrated"]["after"]
    saliency = m.saliency
    best = next(c for c in saliency["candidates"] if c["method"] == saliency["method"])
    heading = "\n## Calibration and explanation\n"
    text = (
        f"Version {m.version} keeps version {m.calibration['recalibrated']['from_version']}'s "
        f"weights. Calibration refitted on the {after['n']} validation phantoms: temperature "
        f"{m.temperature:.2f} and a bias per class "
        f"({', '.join(f'{k} {v:+.3f}' for k, v in m.calibration['class_bias'].items())}); "
        f"accuracy at the decision rule {after['accuracy']:.3f}, ECE {after['ece']:.3f}. "
        f"Sample CT phantom: P(lesion) = {training['sample_ct_phantom_p_lesion']:.2f}. "
        f"Default explanation: {saliency['method'].replace('_', ' ')}, the most faithful on "
        f"{best['cases']} validation phantoms with a lesion (it passed its check on "
        f"{best['passed']} of them, mean insertion-minus-deletion gap {best['mean_gap']:.2f})."
    )
    card = common.replace_section(m.model_card, heading, textwrap.fill(text, 100))
    bundle.metadata = replace(m, training=training, model_card=card)


def add_saliency_choice(bundle: Bundle, *, seed: int = 2024, cases: int = SALIENCY_CASES) -> None:
    """Record in ``bundle`` the saliency method that measured most faithful on the first
    ``cases`` validation phantoms with a lesion (the map's own check, see :mod:`.saliency`)."""
    lesions = (
        volume
        for volume, label in clear_cases(VALIDATION_CASES, seed + 10_000, PHANTOM_SHAPES)
        if label == "lesion"
    )
    volumes = [volume for _, volume in zip(range(cases), lesions, strict=False)]
    common.add_saliency_choice(bundle, volumes, "lesion")


def _largest(shapes: Sequence[tuple[int, int, int]]) -> tuple[int, int, int]:
    """The largest field of view, where lesions are smallest on the grid."""
    return max(shapes, key=lambda shape: shape[0] * shape[1] * shape[2])


def _paired_data(
    cases: int,
    seed: int,
    shapes: Sequence[tuple[int, int, int]],
    lesions: Lesions,
    input_shape: Sequence[int],
    validation: LabelledData,
) -> LabelledData:
    radius, contrast = (span(lesions[key]) for key in lesions)
    fields = " and ".join("x".join(map(str, shape)) for shape in shapes)
    description = f"{cases} phantoms ({fields}) in pairs, lesions {radius} mm, {contrast} HU"
    training = on_grid(paired_cases(cases, seed, shapes, lesions), input_shape, description)
    return training_split(training, validation)


def _describe(
    result: TrainingResult,
    held_out: dict[str, EvaluationReport],
    sample: tuple[float, float, float],
    shapes: Sequence[tuple[int, int, int]],
    minutes: float,
) -> None:
    """Write the honest model card and the held-out figures into the new bundle's metadata."""
    m = result.bundle.metadata
    p_lesion, inside, outside = sample
    held = held_out_metrics(held_out)
    val = m.training["metrics"]["validation"]
    fields = " and ".join("x".join(map(str, shape)) for shape in shapes)
    window = f"{INTENSITY['center']:g}/{INTENSITY['width']:g} HU"
    clear, subtle = held["clear"], held["make_cases"]
    radius, contrast = (span(CLEAR_LESIONS[key]) for key in CLEAR_LESIONS)
    card = f"""# Demo CT lesion classifier (synthetic data only)

**A demonstration, not a diagnostic device.** Trained only on computer-generated CT phantoms; it
has never seen a patient scan and its output on real CT means nothing clinically.

- **Task**: whole-scan classification, `normal` vs `lesion` (focal lesions in liver, spleen or
  kidney, hypo- or hyperdense). It is trained for clear lesions: {radius} mm radius, {contrast}
  HU against the organ.
- **Input**: CT in Hounsfield units, abdominal window {window}, the whole scan stretched onto a
  {"x".join(map(str, m.input_shape))} grid.
- **Network**: `{m.architecture}`, made by `python -m napari_scan_classifier.models.train_demo`
  ({minutes:.0f} min on a 2-core CPU for the last run, no augmentation).
- **Training data**: phantoms from `napari_scan_classifier.phantoms` ({fields} voxels of
  2.5 x 1.5 x 1.5 mm), in pairs that share anatomy and differ only by the lesions, fresh
  phantoms for each stage, each stage starting from the one before:
{lineage(result.bundle)}
- **Validation** ({val["n"]} unpaired phantoms with clear lesions, used for early stopping and
  temperature calibration): AUC {fmt(val["auc"])}, accuracy {fmt(val["accuracy"])}, ECE
  {fmt(val["ece_before_calibration"])} before and {fmt(val["ece"])} after calibration
  (temperature {m.temperature:.2f}).
- **Held-out test, clear lesions** ({clear["n"]} phantoms from another seed, never used in
  training or selection): AUC {fmt(clear["auc"])}, accuracy {fmt(clear["accuracy"])},
  sensitivity {fmt(clear["sensitivity"])}, specificity {fmt(clear["specificity"])}.
- **Held-out test, subtle lesions** ({subtle["n"]} phantoms from `phantoms.make_cases`: 5-15 mm,
  20-60 HU): AUC {fmt(subtle["auc"])}, accuracy {fmt(subtle["accuracy"])}. Many such lesions
  are missed: it was not trained for them.
- **Sample CT phantom** (`sample_data/ct_phantom`, two lesions of 12-18 mm, 60-90 HU):
  P(lesion) = {p_lesion:.2f}. Grad-CAM (layer `{m.gradcam_layer}`) averages {inside:.2f} inside
  its lesions and {outside:.2f} elsewhere.
- **Limits**: phantom anatomy is simple and lesions are spheroids; small or low-contrast lesions
  are missed. Use it to try the plugin, then fine-tune on your own annotated cases.
"""
    training: dict[str, Any] = {
        **m.training,
        "metrics": {**m.training["metrics"], **{f"held_out_{k}": v for k, v in held.items()}},
        "sample_ct_phantom_p_lesion": round(p_lesion, 4),
        "sample_ct_phantom_gradcam_inside_outside": [round(inside, 4), round(outside, 4)],
    }
    result.bundle.metadata = replace(
        m,
        description="Demo: synthetic CT phantoms, normal vs lesion (not for diagnosis)",
        model_card=card,
        training=training,
    )
