"""Short text lines that describe one result, for the command line and the widget."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from napari_scan_classifier.results.constants import (
    NO_MODEL,
    OUT_OF_DISTRIBUTION,
    SALIENCY_TITLES,
    UNCERTAINTY_TITLES,
)
from napari_scan_classifier.saliency import method_key


def probability_lines(result: Mapping[str, Any]) -> list[str]:
    """``"lesion   0.83 ± 0.04"`` per class (± the SD over the uncertainty passes)."""
    std = result["uncertainty"]["std"]
    width = max(len(name) for name in result["probabilities"])
    return [
        f"{name:<{width}}  {p:.2f} ± {std[name]:.2f}" for name, p in result["probabilities"].items()
    ]


def summary_lines(
    result: Mapping[str, Any], *, probabilities: bool = True, banner: bool = True
) -> list[str]:
    """What a person reads first: prediction, probabilities (unless a chart shows them), model,
    device, time, caveats."""
    model = result["model"]
    timings = result["timings"]
    parts = ", ".join(f"{k} {v:.2f}" for k, v in timings.items() if k != "total")
    uncertainty = result["uncertainty"]
    spread = (
        f"{uncertainty['passes']} {UNCERTAINTY_TITLES.get(uncertainty['method'], '')} passes"
        if uncertainty["method"] != "none"
        else "no uncertainty passes"
    )
    if uncertainty.get("mirrored"):
        spread += ", each the mean of the scan and its mirror image"
    lines = [
        *(ood_lines(result) if banner else []),
        f"Predicted: {result['predicted_class']}",
        *_frame_lines(result),
        *decision_lines(result.get("decision_rule")),
        *(probability_lines(result) if probabilities else []),
        *_choice_lines(result.get("model_choice")),
        f"Model: {model['name']} v{model['version']} on {result['device']} ({spread})",
        f"Time: {timings['total'] + timings.get('saliency', 0.0):.2f} s ({parts})",
    ]
    lines += _saliency_lines(result.get("saliency"))
    if result.get("modality_warning"):
        lines.append(f"Warning: {result['modality_warning']}")
    return lines


def _frame_lines(result: Mapping[str, Any]) -> list[str]:
    """Which volume of a 4D scan answered: another time point or echo may answer otherwise."""
    if result.get("frame") is None:
        return []
    return [f"Frame: {result['frame']} of a 4D scan (0 to {result['frames'] - 1})"]


def decision_lines(rule: Mapping[str, Any] | None) -> list[str]:
    """How the class was called: said only for an operating point (a threshold on one class's
    probability), since it moves the answer away from the most probable class."""
    if not rule or rule.get("kind") != "threshold":
        return []
    positive, threshold = rule["positive_class"], rule["threshold"]
    target = rule.get("target_sensitivity")
    why = f" (operating point for sensitivity {target:.2f})" if target is not None else ""
    return [f"Decision: {positive} when p({positive}) >= {threshold:.3f}{why}"]


def _choice_lines(choice: Mapping[str, Any] | None) -> list[str]:
    """Which model the scan chose and why (nothing when the model was given)."""
    if not choice:
        return []
    return [f"Chosen by the scan: {choice['reason']} ({choice['how']})"]


def ood_lines(result: Mapping[str, Any]) -> list[str]:
    """The out-of-distribution banner: a headline and one line per reason (none when the scan
    is within the training distribution)."""
    ood = result.get("ood")
    if not ood or ood["in_distribution"]:
        return []
    return [
        "OUT OF DISTRIBUTION: this scan is unlike the scans the model was trained on; "
        "do not rely on its answer",
        *(f"  - {reason}" for reason in ood["reasons"]),
    ]


def _saliency_lines(saliency: Mapping[str, Any] | None) -> list[str]:
    if not saliency:
        return []
    title = SALIENCY_TITLES.get(method_key(saliency["method"]), saliency["method"])
    layer = f" (layer {saliency['layer']})" if saliency.get("layer") else ""
    lines = [f"Saliency: {title}{layer} of '{saliency['target_class']}'"]
    for failed in saliency.get("instead_of") or ():
        failed_title = SALIENCY_TITLES.get(method_key(failed["method"]), failed["method"])
        lines.append(
            f"  shown instead of the model's default ({failed_title}), whose map failed its "
            f"check on this scan (gap {failed['gap']:.3f})"
        )
    check = saliency.get("faithfulness")
    if check:
        verdict = "passed" if check["passed"] else "FAILED"
        lines.append(f"Saliency check {verdict}: {check['reason']}")
    return lines


def saliency_title(saliency: Mapping[str, Any]) -> str:
    """``"Grad-CAM (lesion)"``: for layer names."""
    title = SALIENCY_TITLES.get(method_key(saliency["method"]), saliency["method"])
    return f"{title} ({saliency['target_class']})"


def slice_text(result: Mapping[str, Any], k: int) -> str | None:
    """``"slice 12/72: p(normal)=0.17 p(lesion)=0.83"`` for slice ``k`` (0-based, as acquired),
    or None where the model scores no slices or did not reach this one."""
    per_slice = result.get("per_slice")
    if not per_slice:
        return None
    scores = {name: values[k] for name, values in per_slice.items() if 0 <= k < len(values)}
    if not scores or any(p is None for p in scores.values()):
        return None
    total = len(next(iter(per_slice.values())))
    shown = " ".join(f"p({name})={p:.2f}" for name, p in scores.items())
    return f"slice {k + 1}/{total}: {shown}"


def row_lines(row: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """One result row as a terminal shows it: the model chosen and why, then the answer; and,
    apart, its warnings (the error, out-of-distribution reasons, geometry)."""
    name = row["series"]
    outcome = row.get("predicted_class") or "not classified"
    if row["status"] == OUT_OF_DISTRIBUTION:
        outcome = f"out of distribution (the model would say {outcome})"
    choice = row.get("model_choice")
    shown = choice and row["status"] != NO_MODEL  # without a model, the error says why
    chosen = [f"{name}: {choice['reason']} ({choice['how']})"] if shown else []
    reasons = (row.get("ood") or {}).get("reasons", [])
    modality = None if reasons else row.get("modality_warning")  # the reasons say it too
    notes = [row["error"], modality, *reasons, *row["geometry_warnings"]]
    return [*chosen, f"{name}: {outcome}"], [f"{name}: {note}" for note in filter(None, notes)]
