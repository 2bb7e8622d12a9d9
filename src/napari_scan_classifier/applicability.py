"""Is this scan within what the model was trained on? Cheap input checks and a feature score.

A classifier answers every input with some probability, even pure noise or a scan of another
organ. Before its answer is shown, each scan is checked two ways, and every failure comes with a
reason a person can read:

1. **Input checks** against the bundle's recipe: the scan's modality; for CT, values a scanner
   gives in Hounsfield units (-1024 to 3071, scanner padding aside) and air somewhere in the
   field of view (a missing rescale intercept or a wrong slope moves both), and the body not cut
   off by the image edge or the reconstruction circle (truncation); neighbouring voxels
   that correlate like anatomy, not like noise; field of view and voxel spacing within a margin
   of the ranges seen in training; intensity percentiles within the training range (CT); the
   body region, where the scan's header and the bundle both record one. The ranges are
   recorded in ``bundle.json`` (``applicability.checks``) when the bundle is trained.
2. **Feature score**: the Mahalanobis distance of the network's penultimate-layer features to the
   nearest class mean, under one covariance shared by the classes (Ledoit-Wolf shrinkage keeps it
   well conditioned with few cases), fitted on the training cases. Its threshold is set on the
   validation cases' scores by split conformal prediction (:func:`threshold_for`), so that at
   most ``rate`` (default 5 %) of in-distribution scans are turned away on average. Chosen over
   the energy score and the maximum softmax probability by measurement
   (``benchmarks/bench_ood.py``): a two-class network gives noise and other anatomy confident
   logits, so scores from the logits alone separate them poorly, while the features themselves
   move far from the training cloud. The class means and the precision matrix are stored beside
   the model as :data:`DETECTOR_FILE`.

A scan fails when any check fails or its score exceeds the threshold; its probabilities are
still reported, with ``status: "out_of_distribution"``.
"""

from __future__ import annotations

import io
import math
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
from scipy import ndimage
from sklearn.covariance import LedoitWolf

from napari_scan_classifier.volume import Volume

DEFAULT_FALSE_ABSTENTION = 0.05
DETECTOR_KIND = "mahalanobis"
CT_HU_RANGE = (-1024.0, 3071.0)  # what a CT scanner stores, in HU
CT_HU_TOLERANCE = 100.0  # values this far beyond the range count as implausible
CT_OUTSIDE_FRACTION = 0.005  # fraction of implausible voxels that fails the check
CT_AIR_HU = -500.0  # a body CT has voxels darker than this (air around the body, lungs, gas)
CT_AIR_FRACTION = 0.001
CT_PERCENTILE_TOLERANCE_HU = 150.0
MIN_NEIGHBOUR_CORRELATION = 0.5  # below this the voxels look like noise, not anatomy
CORRELATION_MARGIN = 0.15
TISSUE_HU = -300.0  # denser than air and lung: fat, soft tissue, bone
EDGE_TISSUE_MARGIN = 0.1
PADDING_BORDER_FRACTION = 0.9  # image edge this constant: a region outside the reconstruction
MAX_CIRCLE_CUT = 0.05
FOV_FACTOR = 1.5  # field of view may be this factor beyond the range seen in training
SPACING_FACTOR = 2.0
PERCENTILES = (1.0, 50.0, 99.0)
_SAMPLE_VOXELS = 400_000


@dataclass
class Applicability:
    """One scan's verdict: ``score`` and ``threshold`` of the feature detector (None without
    one), whether the scan is within the training distribution, and why not."""

    score: float | None
    threshold: float | None
    in_distribution: bool
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "threshold": self.threshold,
            "in_distribution": self.in_distribution,
            "reasons": list(self.reasons),
        }


# ------------------------------------------------------------------------ scan summaries


def summarise(volume: Volume) -> dict[str, Any]:
    """What the input checks look at, for one scan: geometry, intensities, texture, region;
    axes in world order (z, y, x), as the model grid reads them, whatever the acquisition."""
    volume = volume.world_aligned()
    voxels = _spatial(volume.voxels)
    sample = _sample(voxels)
    spacing = [float(s) for s in volume.spacing]
    body_part = volume.metadata.get("body_part")
    return {
        "modality": volume.modality,
        "fov_mm": [n * s for n, s in zip(volume.shape, spacing, strict=True)],
        "spacing_mm": spacing,
        "percentiles": [float(v) for v in np.percentile(sample, PERCENTILES)],
        "outside_hu_fraction": _outside_hu_fraction(sample),
        "air_fraction": float(np.mean(sample < CT_AIR_HU)),
        "neighbour_correlation": neighbour_correlation(voxels),
        "edge_tissue_fraction": edge_tissue_fraction(voxels),
        "circle_cut_fraction": circle_cut_fraction(voxels),
        "body_part": str(body_part).upper() if body_part else None,
    }


def neighbour_correlation(voxels: np.ndarray) -> float:
    """Correlation of each voxel with its in-plane neighbour: near 1 for anatomy (smooth regions
    with edges), near 0 for noise."""
    step = max(1, voxels.shape[0] // 16)
    planes = np.asarray(voxels[::step], dtype=np.float64)
    a, b = planes[..., :-1].ravel(), planes[..., 1:].ravel()
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return 1.0 if a.size >= 2 and np.array_equal(a, b) else 0.0
    return float(np.corrcoef(a, b)[0, 1])


def edge_tissue_fraction(voxels: np.ndarray) -> float:
    """Fraction of the in-plane border voxels denser than lung (CT): near 0 when the whole body
    is in the field of view, high when the body is cut off at the image edge (truncation)."""
    edges = np.concatenate(
        [voxels[:, 0, :], voxels[:, -1, :], voxels[:, :, 0], voxels[:, :, -1]], axis=1
    )
    return float(np.mean(edges > TISSUE_HU))


def circle_cut_fraction(voxels: np.ndarray) -> float:
    """Where the image corners hold one constant value (outside the reconstruction circle: a
    padding value, or air), the fraction of that region's rim that is tissue: 0 when the body
    lies inside the circle, high when the circle cuts through the body (truncation)."""
    step = max(1, voxels.shape[0] // 16)
    planes = np.asarray(voxels[::step])
    padding = planes == planes.min()
    border = np.concatenate(
        [padding[:, 0, :], padding[:, -1, :], padding[:, :, 0], padding[:, :, -1]], axis=1
    )
    if border.mean() < PADDING_BORDER_FRACTION:
        return 0.0
    in_plane = np.zeros((1, 3, 3), dtype=bool)
    in_plane[0, 1, :] = in_plane[0, :, 1] = True
    rim = ndimage.binary_dilation(padding, in_plane) & ~padding
    return float(np.mean(planes[rim] > TISSUE_HU)) if rim.any() else 0.0


def fit_checks(
    summaries: Sequence[Mapping[str, Any]],
    modality: str,
    base: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ranges the input checks hold a scan to, from the training cases' summaries; merged
    with ``base`` (a fine-tuned model has seen its base's cases too)."""
    checks: dict[str, Any] = {"modality": modality}
    if summaries:
        for key in ("fov_mm", "spacing_mm", "percentiles"):
            values = np.array([s[key] for s in summaries], dtype=float)
            checks[key] = {"min": values.min(axis=0).tolist(), "max": values.max(axis=0).tolist()}
        checks["neighbour_correlation_min"] = min(s["neighbour_correlation"] for s in summaries)
        checks["edge_tissue_fraction_max"] = max(s["edge_tissue_fraction"] for s in summaries)
        parts = {s.get("body_part") for s in summaries}
        if None not in parts:
            checks["body_parts"] = sorted(parts)
    return _merged(checks, base) if base else checks


def _merged(new: dict[str, Any], base: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base) | {"modality": new["modality"]}
    for key in ("fov_mm", "spacing_mm", "percentiles"):
        if key in new and key in base:
            out[key] = {
                "min": np.minimum(new[key]["min"], base[key]["min"]).tolist(),
                "max": np.maximum(new[key]["max"], base[key]["max"]).tolist(),
            }
        elif key in new:
            out[key] = new[key]
    if "neighbour_correlation_min" in new:
        out["neighbour_correlation_min"] = min(
            new["neighbour_correlation_min"], base.get("neighbour_correlation_min", 1.0)
        )
    if "edge_tissue_fraction_max" in new:
        out["edge_tissue_fraction_max"] = max(
            new["edge_tissue_fraction_max"], base.get("edge_tissue_fraction_max", 0.0)
        )
    if "body_parts" in new and "body_parts" in base:
        out["body_parts"] = sorted(set(new["body_parts"]) | set(base["body_parts"]))
    return out


def check_reasons(summary: Mapping[str, Any], checks: Mapping[str, Any]) -> list[str]:
    """Why a scan with this ``summary`` is outside the ``checks`` (empty when it is not)."""
    modality = checks.get("modality")
    reasons = []
    if modality and summary["modality"] != modality:
        reasons.append(
            f"the scan is {summary['modality']} but the model was trained on {modality} scans"
        )
    if modality == "CT":
        reasons += _ct_reasons(summary, checks)
    reasons += _texture_reasons(summary, checks)
    reasons += _geometry_reasons(summary, checks)
    parts = checks.get("body_parts")
    if parts and summary.get("body_part") and summary["body_part"] not in parts:
        reasons.append(
            f"the scan shows the {summary['body_part'].lower()} but the model was trained on "
            f"{' and '.join(p.lower() for p in parts)} scans"
        )
    return reasons


def _ct_reasons(summary: Mapping[str, Any], checks: Mapping[str, Any]) -> list[str]:
    reasons = []
    outside = summary["outside_hu_fraction"]
    if outside > CT_OUTSIDE_FRACTION:
        reasons.append(
            f"{outside:.1%} of the voxels lie outside the Hounsfield range a CT scanner gives "
            f"({CT_HU_RANGE[0]:g} to {CT_HU_RANGE[1]:g} HU): the values are not CT numbers"
        )
    if summary["air_fraction"] < CT_AIR_FRACTION:
        reasons.append(
            f"no voxel is darker than {CT_AIR_HU:g} HU, yet a CT has air around the body: the "
            "values look shifted or scaled (e.g. a missing rescale intercept), or not CT at all"
        )
    if reasons:  # not Hounsfield units: the checks below would only repeat it
        return reasons
    cut = summary.get("circle_cut_fraction", 0.0)
    if cut > MAX_CIRCLE_CUT:
        reasons.append(
            f"the reconstruction circle cuts through the body ({cut:.0%} of its rim is tissue): "
            "part of the body is missing (truncated field of view)"
        )
    edge = summary["edge_tissue_fraction"]
    edge_limit = checks.get("edge_tissue_fraction_max", 1.0) + EDGE_TISSUE_MARGIN
    if edge > edge_limit:
        reasons.append(
            f"tissue reaches the image edge along {edge:.0%} of its border (at most "
            f"{edge_limit:.0%} in the training scans): the body is cut off (truncated field "
            "of view)"
        )
    span = checks.get("percentiles")
    if span:
        for q, value, low, high in zip(
            PERCENTILES, summary["percentiles"], span["min"], span["max"], strict=True
        ):
            if not low - CT_PERCENTILE_TOLERANCE_HU <= value <= high + CT_PERCENTILE_TOLERANCE_HU:
                reasons.append(
                    f"{q:g} % of the voxels lie below {value:.0f} HU, where the training scans "
                    f"had {low:.0f} to {high:.0f} HU: the intensities are unlike the training "
                    "data (wrong scaling, heavy artefacts or other anatomy)"
                )
                break
    return reasons


def _texture_reasons(summary: Mapping[str, Any], checks: Mapping[str, Any]) -> list[str]:
    trained = checks.get("neighbour_correlation_min")
    floor = MIN_NEIGHBOUR_CORRELATION
    if trained is not None:
        floor = max(floor, trained - CORRELATION_MARGIN)
    r = summary["neighbour_correlation"]
    if r >= floor:
        return []
    return [
        f"neighbouring voxels correlate at {r:.2f}, below the {floor:.2f} that anatomy gives: "
        "the data look like noise rather than anatomy"
    ]


def _geometry_reasons(summary: Mapping[str, Any], checks: Mapping[str, Any]) -> list[str]:
    reasons = []
    for key, factor, what in (
        ("fov_mm", FOV_FACTOR, "field of view"),
        ("spacing_mm", SPACING_FACTOR, "voxel spacing"),
    ):
        span = checks.get(key)
        if not span:
            continue
        value = np.asarray(summary[key], dtype=float)
        low = np.asarray(span["min"]) / factor
        high = np.asarray(span["max"]) * factor
        if np.any(value < low) or np.any(value > high):
            reasons.append(
                f"the {what} is {_mm(value)} mm; the model saw {_mm(span['min'])} to "
                f"{_mm(span['max'])} mm (z, y, x) in training"
            )
    return reasons


def _mm(values: Iterable[float]) -> str:
    return " x ".join(f"{v:.3g}" for v in values)


def _spatial(voxels: np.ndarray) -> np.ndarray:
    return voxels[0] if voxels.ndim == 4 else voxels


def _sample(voxels: np.ndarray) -> np.ndarray:
    step = max(1, round((voxels.size / _SAMPLE_VOXELS) ** (1 / 3)))
    return np.asarray(voxels[::step, ::step, ::step], dtype=np.float64).ravel()


def _outside_hu_fraction(sample: np.ndarray) -> float:
    """Fraction beyond the HU range, not counting a padding value below it (scanners fill the
    corners outside the reconstruction circle with one constant such as -2048 or -3024)."""
    low, high = CT_HU_RANGE[0] - CT_HU_TOLERANCE, CT_HU_RANGE[1] + CT_HU_TOLERANCE
    outside = (sample < low) | (sample > high)
    lowest = sample.min(initial=0.0)
    if lowest < low:
        outside &= sample != lowest
    return float(outside.mean())


# ------------------------------------------------------------------------ feature detector


@dataclass
class FeatureDetector:
    """Class means and a shared precision matrix of penultimate-layer features."""

    means: np.ndarray  # (classes, features)
    precision: np.ndarray  # (features, features)

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray) -> FeatureDetector:
        """Fit on training features (N, F) with class indices (N,); absent classes are skipped."""
        features = np.asarray(features, dtype=np.float64)
        labels = np.asarray(labels)
        classes = np.unique(labels)
        means = np.stack([features[labels == c].mean(axis=0) for c in classes])
        centred = features - means[np.searchsorted(classes, labels)]
        precision = LedoitWolf(assume_centered=True).fit(centred).precision_
        return cls(means.astype(np.float32), precision.astype(np.float32))

    def score(self, features: np.ndarray) -> np.ndarray:
        """Distance (in standard deviations) of each row of (N, F) to the nearest class mean."""
        x = np.asarray(features, dtype=np.float64)[:, None, :] - self.means[None].astype(float)
        squared = np.einsum("ncf,fg,ncg->nc", x, self.precision.astype(float), x)
        return np.sqrt(np.maximum(squared.min(axis=1), 0.0))

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, means=self.means, precision=self.precision)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> FeatureDetector:
        """Read what :meth:`to_bytes` wrote; ValueError when the content is not that."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                means, precision = archive["means"], archive["precision"]
        except (OSError, KeyError, ValueError, EOFError) as error:
            raise ValueError(f"not a detector file ({error})") from None
        n = means.shape[-1] if means.ndim == 2 else -1
        if means.ndim != 2 or precision.shape != (n, n):
            raise ValueError(
                f"means {means.shape} and precision {precision.shape} do not fit together"
            )
        if not (np.all(np.isfinite(means)) and np.all(np.isfinite(precision))):
            raise ValueError("the detector holds NaN or infinite values")
        return cls(means, precision)


def threshold_for(scores: np.ndarray, rate: float = DEFAULT_FALSE_ABSTENTION) -> float:
    """The split-conformal threshold: the ``ceil((n + 1)(1 - rate))``-th smallest of the ``n``
    validation scores, so that a new in-distribution scan scores above it with probability at
    most ``rate`` (the plain ``1 - rate`` quantile turns away more than ``rate`` of new scans on
    average). With too few scores for that, the highest."""
    if not 0.0 < rate < 1.0:
        raise ValueError(f"the false-abstention rate must be within (0, 1), got {rate}")
    ordered = np.sort(np.asarray(scores, dtype=float))
    rank = min(len(ordered), math.ceil((len(ordered) + 1) * (1.0 - rate)))
    return float(ordered[rank - 1])


_EXTRACTORS: weakref.WeakKeyDictionary[keras.Model, keras.Model] = weakref.WeakKeyDictionary()


def features_of(model: keras.Model, batch: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Penultimate-layer features (N, F) of a (N, D, H, W) batch on the model grid: the input of
    the layer that makes the volume logits (dropout is off outside training)."""
    if model not in _EXTRACTORS:
        _EXTRACTORS[model] = keras.Model(model.input, _volume_head(model).input)
    extractor = _EXTRACTORS[model]
    parts = [
        np.asarray(extractor.predict_on_batch(batch[i : i + batch_size, ..., None]))
        for i in range(0, len(batch), batch_size)
    ]
    return np.concatenate(parts).reshape(len(batch), -1).astype(np.float64)


def _volume_head(model: keras.Model) -> keras.Layer:
    output = model.output["volume"]
    for layer in model.layers:
        if layer.output is output:
            return layer
    raise ValueError("the model's volume logits do not come from one layer")


def fit_detector(
    model: keras.Model,
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    rate: float = DEFAULT_FALSE_ABSTENTION,
) -> tuple[FeatureDetector, dict[str, Any]]:
    """Fit the feature detector on the training cases, its threshold on the validation cases;
    returns it with the ``bundle.json`` entry describing it."""
    detector = FeatureDetector.fit(features_of(model, train_x), train_y)
    scores = detector.score(features_of(model, val_x))
    threshold = threshold_for(scores, rate)
    info = {
        "kind": DETECTOR_KIND,
        "features": int(detector.means.shape[1]),
        "threshold": threshold,
        "false_abstention_rate": rate,
        "validation_false_abstention": float(np.mean(scores > threshold)),
        "n_train": len(train_y),
        "n_validation": len(scores),
    }
    if (len(scores) + 1) * rate < 1:  # even the highest of them cannot hold the rate
        info["note"] = (
            f"the threshold was set on {len(scores)} validation cases, too few to hold a "
            f"{rate:.0%} false-abstention rate: it is their highest score"
        )
    return detector, info


def fit_applicability(
    model: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    val_x: np.ndarray,
    summaries: Sequence[Mapping[str, Any]],
    modality: str,
    base: Mapping[str, Any] | None = None,
    rate: float = DEFAULT_FALSE_ABSTENTION,
) -> tuple[FeatureDetector, dict[str, Any]]:
    """The detector and the ``bundle.json`` ``applicability`` entry of a newly trained model:
    the detector fitted on ``train`` (x, y) and thresholded on ``val_x``, the input-check
    ranges from the cases' ``summaries`` merged with the ``base`` model's ``applicability``."""
    detector, info = fit_detector(model, *train, val_x, rate)
    base_checks = (base or {}).get("checks")
    return detector, {"checks": fit_checks(summaries, modality, base_checks), "detector": info}


# ------------------------------------------------------------------------ assessing scans


def assess(
    volumes: Sequence[Volume],
    batch: np.ndarray,
    model: keras.Model,
    applicability: Mapping[str, Any],
    detector: FeatureDetector | None,
    modality: str,
) -> list[Applicability]:
    """The verdict for each scan of ``volumes``, whose model inputs are ``batch`` (N, D, H, W).

    ``applicability`` is the bundle's ``applicability`` entry; without recorded ranges, the
    modality and the fixed CT and noise checks still apply.
    """
    checks = applicability.get("checks") or {"modality": modality}
    info = applicability.get("detector")
    scores: list[float | None] = [None] * len(volumes)
    threshold = None
    if detector is not None and info:
        threshold = float(info["threshold"])
        scores = [float(s) for s in detector.score(features_of(model, batch))]
    verdicts = []
    for volume, score in zip(volumes, scores, strict=True):
        reasons = check_reasons(summarise(volume), checks)
        if score is not None and threshold is not None and score > threshold:
            reasons.append(
                f"the network's features are far from every training case (score {score:.1f}, "
                f"above the threshold {threshold:.1f} that {1 - info['false_abstention_rate']:.0%}"
                " of validation scans fall within)"
            )
        verdicts.append(Applicability(score, threshold, not reasons, reasons))
    return verdicts
