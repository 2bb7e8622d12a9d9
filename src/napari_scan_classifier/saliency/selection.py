"""Which method explains a bundle best: every method behind one call, and the choice measured on
cases, recorded in the bundle as its default.

A bundle's ``saliency`` record (``bundle.json``) names the method (and layer) that measured most
faithful on its validation cases (:func:`choose_saliency`, stored by
:func:`with_saliency_choice`); :func:`saliency_map` with no method uses it. A bundle without a
record gets integrated gradients: model-agnostic, full resolution, and on the shipped demo model
the most faithful and best localised of the methods measured.

A method that is most faithful on validation cases can still fail its check on one scan (on the
sample scan of version 8 of the demo CT model, two large lesions: integrated gradients ranked the
few voxels feeding the maximum-pooled cell first, and the other lesion kept p(lesion) up while
they were removed).
So when the default map is checked and fails, :func:`saliency_map` tries the bundle's other
measured candidates that passed on at least half of its validation cases, best first (at most
:data:`MAX_REPLACEMENTS`), and returns the first that passes on this scan, naming in its
``instead_of`` the default that failed; when none passes, the default's map with its failed check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from napari_scan_classifier.inference import Cancel, Progress, Reporter
from napari_scan_classifier.models import Bundle, BundleMetadata
from napari_scan_classifier.preprocess import Box
from napari_scan_classifier.saliency.core import SaliencyMap, Target
from napari_scan_classifier.saliency.faithfulness import FAITHFUL_MARGIN, measure_faithfulness
from napari_scan_classifier.saliency.gradients import integrated_gradients
from napari_scan_classifier.saliency.maps import activation_layers, grad_cam, occlusion
from napari_scan_classifier.volume import Volume

METHODS = ("gradcam", "integrated_gradients", "occlusion")
TITLES = {
    "gradcam": "Grad-CAM",
    "integrated_gradients": "Integrated gradients",
    "occlusion": "Occlusion",
}
FALLBACK_METHOD = "integrated_gradients"
MAX_REPLACEMENTS = 2  # other candidates tried when the default map fails its check on a scan
Candidate = tuple[str, str | None]  # (method, layer or None)


def method_key(name: str) -> str:
    """A SaliencyMap's ``method`` ("grad_cam") as its option name ("gradcam")."""
    return "gradcam" if name == "grad_cam" else name


def default_method(bundle: Bundle) -> Candidate:
    """The method and layer recorded in the bundle, else integrated gradients."""
    record = bundle.metadata.saliency
    return record.get("method", FALLBACK_METHOD), record.get("layer")


def saliency_map(
    volume: Volume,
    bundle: Bundle,
    method: str | None = None,
    target_class: Target = None,
    box: Box | None = None,
    *,
    layer: str | None = None,
    faithfulness: bool = False,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> SaliencyMap:
    """The ``method`` map (one of :data:`METHODS`; None: the bundle's default, replaced by a
    measured candidate that passes when the default fails its check here, see the module doc)
    of ``target_class``; ``layer`` for Grad-CAM (None: the recorded or ``gradcam_layer``)."""
    run = (volume, bundle, target_class, box, progress, cancel)
    if method is None:
        default, recorded = default_method(bundle)
        first = _one_map(*run, default, layer or recorded, faithfulness)
        if first.faithfulness is None or first.faithfulness.passed:
            return first
        for candidate, candidate_layer in replacement_candidates(bundle):
            other = _one_map(*run, candidate, candidate_layer, True)
            if other.faithfulness is not None and other.faithfulness.passed:
                failed = {"method": first.method, "layer": first.layer}
                return replace(other, instead_of=({**failed, "gap": first.faithfulness.gap},))
        return first
    return _one_map(*run, method, layer, faithfulness)


def replacement_candidates(bundle: Bundle) -> list[Candidate]:
    """The bundle's measured candidates other than its default that passed their check on at
    least half of its validation cases, most faithful first, at most :data:`MAX_REPLACEMENTS`."""
    record = bundle.metadata.saliency
    default = default_method(bundle)
    scores = [
        c
        for c in record.get("candidates", [])
        if (c["method"], c.get("layer")) != default and 2 * c["passed"] >= c["cases"] > 0
    ]
    scores.sort(key=lambda c: -c["mean_gap"])
    return [(c["method"], c.get("layer")) for c in scores[:MAX_REPLACEMENTS]]


def _one_map(
    volume: Volume,
    bundle: Bundle,
    target_class: Target,
    box: Box | None,
    progress: Progress | None,
    cancel: Cancel | None,
    method: str,
    layer: str | None,
    faithfulness: bool,
) -> SaliencyMap:
    if method not in METHODS:
        raise ValueError(f"saliency method must be one of {METHODS}, got {method!r}")
    if method == "gradcam":
        return grad_cam(volume, bundle, target_class, box, layer=layer, faithfulness=faithfulness)
    make = integrated_gradients if method == "integrated_gradients" else occlusion
    return make(
        volume,
        bundle,
        target_class,
        box,
        progress=progress,
        cancel=cancel,
        faithfulness=faithfulness,
    )


@dataclass(frozen=True)
class CandidateScore:
    """One method/layer's faithfulness over the cases: the mean gap and how many passed."""

    method: str
    layer: str | None
    gaps: list[float]
    passed: int

    @property
    def mean_gap(self) -> float:
        return float(np.mean(self.gaps)) if self.gaps else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "layer": self.layer,
            "mean_gap": round(self.mean_gap, 4),
            "passed": self.passed,
            "cases": len(self.gaps),
        }


@dataclass(frozen=True)
class SaliencyChoice:
    """The most faithful candidate (highest mean insertion-minus-deletion gap) and the figures
    of all; ``gradcam_layer``: the best Grad-CAM layer, for when Grad-CAM is asked for."""

    method: str
    layer: str | None
    gradcam_layer: str | None
    target_class: str | None
    scores: list[CandidateScore] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "layer": self.layer,
            "chosen_by": f"mean of insertion AUC - deletion AUC (pass: >= {FAITHFUL_MARGIN:g})",
            "target_class": self.target_class,
            "best_gradcam_layer": self.gradcam_layer,
            "cases": len(self.scores[0].gaps) if self.scores else 0,
            "candidates": [score.to_dict() for score in self.scores],
        }


def candidates_for(bundle: Bundle) -> list[Candidate]:
    """Grad-CAM on every convolution block, and integrated gradients; occlusion (one forward
    pass per patch) only when asked for."""
    return [("gradcam", layer) for layer in activation_layers(bundle)] + [
        ("integrated_gradients", None)
    ]


def choose_saliency(
    bundle: Bundle,
    volumes: Sequence[Volume],
    target_class: Target = None,
    candidates: Sequence[Candidate] | None = None,
    *,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> SaliencyChoice:
    """Measure every candidate's faithfulness on ``volumes`` (e.g. validation cases with the
    finding; ``target_class`` None: each case's predicted class) and pick the best."""
    if not volumes:
        raise ValueError("choosing a saliency method needs at least one case")
    chosen = list(candidates_for(bundle) if candidates is None else candidates)
    report = Reporter(len(chosen) * len(volumes), progress, cancel, job="saliency choice")
    scores = []
    for method, layer in chosen:
        gaps, passed = [], 0
        for volume in volumes:
            report(f"{TITLES.get(method, method)} {layer or ''}".strip())
            result = saliency_map(volume, bundle, method, target_class, layer=layer)
            check = measure_faithfulness(volume, bundle, result)
            gaps.append(check.gap)
            passed += check.passed
        scores.append(CandidateScore(method, layer, gaps, passed))
    report.finish()
    best = max(scores, key=lambda s: s.mean_gap)
    cams = [s for s in scores if s.method == "gradcam"]
    best_cam = max(cams, key=lambda s: s.mean_gap).layer if cams else None
    target = None if target_class is None else str(target_class)
    return SaliencyChoice(best.method, best.layer, best_cam, target, scores)


def with_saliency_choice(metadata: BundleMetadata, choice: SaliencyChoice) -> BundleMetadata:
    """``metadata`` recording ``choice`` as the default map (``gradcam_layer``, what Grad-CAM
    uses when asked for by name, stays as it is; the record names the best one)."""
    return replace(metadata, saliency=choice.to_dict())
