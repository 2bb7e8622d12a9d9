"""The CT demo's model card: written from the bundle's own figures when it is trained, and
refreshed with the calibration and saliency choice when it is finalised, so that what the card,
the README and the tests quote is what the user sees (see :mod:`.ct` for the recipe)."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import keras
import numpy as np

from napari_scan_classifier import phantoms
from napari_scan_classifier.evaluation import EvaluationReport
from napari_scan_classifier.models.bundle import Bundle
from napari_scan_classifier.models.demo import common
from napari_scan_classifier.models.demo.common import fmt, held_out_metrics, lineage, span
from napari_scan_classifier.models.demo.ct_phantoms import INTENSITY, TRAIN_LESIONS
from napari_scan_classifier.preprocess import prepare
from napari_scan_classifier.saliency import grad_cam
from napari_scan_classifier.training import TrainingResult


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


_SAMPLE_BULLET = re.compile(r"^- \*\*Sample CT phantom\*\*.*?(?=^- \*\*)", re.M | re.S)


def _sample_bullet(m: Any, p_lesion: float, inside: float, outside: float) -> str:
    """The model card's line on the sample CT: what the user sees when opening it."""
    return (
        "- **Sample CT phantom** (`sample_data/ct_phantom`, two lesions of 12-18 mm, 60-90 HU):\n"
        f"  P(lesion) = {p_lesion:.2f}. Grad-CAM (layer `{m.gradcam_layer}`) averages "
        f"{inside:.2f} inside\n  its lesions and {outside:.2f} elsewhere."
    )


def record_recalibration(bundle: Bundle) -> None:
    """Refresh the sample CT's probability and add the calibration and saliency choice to the
    model card, so that what the card and tests quote is what the user sees."""
    m = bundle.metadata
    p_lesion = sample_lesion_probability(bundle)
    inside, outside = sample_saliency_contrast(bundle)
    training = {
        **m.training,
        "sample_ct_phantom_p_lesion": round(p_lesion, 4),
        "sample_ct_phantom_gradcam_inside_outside": [round(inside, 4), round(outside, 4)],
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
    card = _SAMPLE_BULLET.sub(lambda _: _sample_bullet(m, p_lesion, inside, outside) + "\n", card)
    bundle.metadata = replace(m, training=training, model_card=card)


def describe(
    result: TrainingResult,
    held_out: dict[str, EvaluationReport],
    sample: tuple[float, float, float],
    shapes: Sequence[tuple[int, int, int]],
    minutes: float,
    blur: bool = False,
) -> None:
    """Write the honest model card and the held-out figures into the new bundle's metadata."""
    m = result.bundle.metadata
    p_lesion, inside, outside = sample
    held = held_out_metrics(held_out)
    val = m.training["metrics"]["validation"]
    fields = " and ".join("x".join(map(str, shape)) for shape in shapes)
    window = f"{INTENSITY['center']:g}/{INTENSITY['width']:g} HU"
    clear, subtle = held["clear"], held["make_cases"]
    copies = " but blurred copies of the lesion phantoms" if blur else ""
    radius, contrast = (span(TRAIN_LESIONS[key]) for key in TRAIN_LESIONS)
    card = f"""# Demo CT lesion classifier (synthetic data only)

**A demonstration, not a diagnostic device.** Trained only on computer-generated CT phantoms; it
has never seen a patient scan and its output on real CT means nothing clinically.

- **Task**: whole-scan classification, `normal` vs `lesion` (focal lesions in liver, spleen or
  kidney, hypo- or hyperdense), trained on lesions of {radius} mm radius, {contrast} HU against
  the organ: clear ones and subtle ones alike.
- **Input**: CT in Hounsfield units, abdominal window {window}, the whole scan stretched onto a
  {"x".join(map(str, m.input_shape))} grid.
- **Network**: `{m.architecture}` (local features on a map of 12 mm cells, pooled by their
  maximum),
  made by `python -m napari_scan_classifier.models.train_demo`
  ({minutes:.0f} min on a 2-core CPU for the last run, no augmentation{copies}).
- **Training data**: phantoms from `napari_scan_classifier.phantoms` ({fields} voxels of
  2.5 x 1.5 x 1.5 mm), in pairs that share anatomy and differ only by the lesions, fresh
  phantoms for each stage, each stage starting from the one before; the first four also learn
  from the phantoms' lesion masks which cells of the map hold a lesion (the second on small
  lesions every other pair, the third on subtle ones; these three on a coarser grid, the fourth
  on the final grid with every kind), the last sees scan labels only, as a user's fine-tuning
  does:
{lineage(result.bundle)}
- **Validation** ({val["n"]} unpaired phantoms with clear lesions, used for early stopping and
  temperature calibration): AUC {fmt(val["auc"])}, accuracy {fmt(val["accuracy"])}, ECE
  {fmt(val["ece_before_calibration"])} before and {fmt(val["ece"])} after calibration
  (temperature {m.temperature:.2f}).
- **Held-out test, clear lesions** ({clear["n"]} phantoms from another seed, never used in
  training, but looked at when choosing the recipe): AUC {fmt(clear["auc"])},
  accuracy {fmt(clear["accuracy"])}, sensitivity {fmt(clear["sensitivity"])},
  specificity {fmt(clear["specificity"])}.
- **Held-out test, subtle lesions** ({subtle["n"]} phantoms from `phantoms.make_cases`: 5-15 mm,
  20-60 HU): AUC {fmt(subtle["auc"])}, accuracy {fmt(subtle["accuracy"])},
  sensitivity {fmt(subtle["sensitivity"])}, specificity {fmt(subtle["specificity"])}.
{_sample_bullet(m, p_lesion, inside, outside)}
- **Limits**: phantom anatomy is simple and lesions are spheroids; the smallest, faintest
  lesions are still missed. Use it to try the plugin, then fine-tune on your own annotated cases.
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
