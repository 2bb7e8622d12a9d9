"""What every demo model's recipe shares: phantoms on the model grid, training in stages that
resume, and the finalisation (applicability check, saliency choice) written into the bundle."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_scan_classifier import datasets
from napari_scan_classifier.applicability import (
    DEFAULT_FALSE_ABSTENTION,
    FOV_FACTOR,
    fit_applicability,
    summarise,
)
from napari_scan_classifier.datasets import LabelledData
from napari_scan_classifier.evaluation import EvaluationReport
from napari_scan_classifier.models.bundle import Bundle, load_bundle, read_metadata
from napari_scan_classifier.models.bundled import named_bundle_path
from napari_scan_classifier.preprocess import prepare
from napari_scan_classifier.saliency import choose_saliency, with_saliency_choice
from napari_scan_classifier.training import (
    TrainingConfig,
    TrainingEvent,
    TrainingResult,
    train,
)
from napari_scan_classifier.volume import Volume

STAGES_FOLDER = "stages"
SEED_RANGE = 10_000  # seeds of each kind of phantom (training, validation, test sets) apart
# headline figures, then each class against the rest and the confusion matrix (rows: true class)
HELD_OUT_KEYS = (
    "n",
    "auc",
    "accuracy",
    "sensitivity",
    "specificity",
    "ece",
    "ece_by_chance",
    "per_class",
    "confusion_matrix",
)
Cases = Iterator[tuple[Volume, str]]


@dataclass(frozen=True)
class Grid:
    """How a demo's phantoms reach its network: model grid, voxel size, intensity, classes."""

    input_shape: tuple[int, int, int]
    spacing: tuple[float, float, float] | None  # None: the scan stretched onto the grid
    intensity: Mapping[str, Any]
    classes: tuple[str, ...]


def on_grid(cases: Iterable[tuple[Volume, str]], grid: Grid, description: str) -> LabelledData:
    """Cases prepared on the model grid, with the demo's class order."""
    return datasets.from_volumes(
        cases,
        grid.input_shape,
        grid.spacing,
        grid.intensity,
        class_names=grid.classes,
        description=description,
    )


def with_summaries(
    cases: Iterable[tuple[Volume, str]], grid: Grid
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Model-grid arrays, class indices and input-check summaries of ``cases``."""
    arrays, labels, summaries = [], [], []
    for volume, label in cases:
        arrays.append(prepare(volume, grid.input_shape, grid.spacing, grid.intensity)[0])
        labels.append(grid.classes.index(label))
        summaries.append(summarise(volume))
    return np.stack(arrays).astype(np.float32), np.array(labels), summaries


@dataclass(frozen=True)
class Stage:
    """One training run of a demo recipe, on fresh phantoms, from the previous stage;
    ``data`` says which phantoms (the demo's own terms)."""

    name: str
    epochs: int
    learning_rate: float
    data: Any = None
    settings: Mapping[str, Any] = field(default_factory=dict)  # TrainingConfig fields to override
    input_shape: tuple[int, int, int] | None = None  # its model grid (None: the recipe's own)
    seeds: int = 0  # its phantoms' seeds, counted from the run's seed


def train_stages(
    stages: Sequence[Stage],
    stage_data: Callable[[int, Stage], LabelledData],
    config: Mapping[str, Any],
    checkpoints: Path,
    verbose: bool,
) -> TrainingResult:
    """Train every stage not yet kept in ``checkpoints`` (each from the one before), keeping all
    but the last there; ``config`` holds the TrainingConfig fields every stage shares."""
    base, done = _resume(checkpoints, stages)
    result: TrainingResult | None = None
    for index, stage in enumerate(stages[done:], start=done):
        settings = TrainingConfig(
            **{**config, **stage.settings},
            epochs=stage.epochs,
            learning_rate=stage.learning_rate,
            patience=max(3, stage.epochs // 3),
        )
        data = stage_data(index, stage)
        result = train(data, settings, base=base, progress=printer(verbose, stage.name))
        _record_stage(result.bundle, base, stage)
        base = result.bundle
        if index < len(stages) - 1:
            result.save(checkpoints / stage.name)
    if result is None:
        raise ValueError(f"{checkpoints} already holds every stage; choose a new --out")
    return result


def shipped_version(name: str) -> int:
    """The version of the demo bundle ``name`` shipped in the package (0 where none is): a new
    one is numbered after it, so a shipped version is never reused."""
    folder = named_bundle_path(name)
    return read_metadata(folder).version if folder is not None else 0


def training_split(training: LabelledData, validation: LabelledData) -> LabelledData:
    """One stage's data: its training phantoms, and the demo's fixed validation phantoms."""
    splits = {"train": training.splits[datasets.ALL], "val": validation.splits[datasets.ALL]}
    return LabelledData(training.class_names, splits, training.description, training.modalities)


def pooled(sets: Sequence[LabelledData], description: str) -> LabelledData:
    """Every case of ``sets`` (on one grid, with the same class names) in one split."""
    splits = [split for data in sets for split in data.splits.values()]
    joined = datasets.Split(
        *(np.concatenate([getattr(s, part) for s in splits]) for part in ("x", "y", "axes"))
    )
    return LabelledData(sets[0].class_names, {datasets.ALL: joined}, description)


def held_out_metrics(reports: Mapping[str, EvaluationReport]) -> dict[str, dict[str, Any]]:
    """The model card's figures of each held-out test set."""
    return {
        name: {k: report.to_dict()[k] for k in HELD_OUT_KEYS} for name, report in reports.items()
    }


def add_applicability(
    bundle: Bundle,
    grid: Grid,
    training: Iterable[tuple[Volume, str]],
    validation: Iterable[tuple[Volume, str]],
    inputs: str,
    *,
    rate: float = DEFAULT_FALSE_ABSTENTION,
) -> None:
    """Fit the applicability check (input ranges and feature detector) into ``bundle`` on
    training-like and validation phantoms; ``inputs`` describes the input checks in the card."""
    m = bundle.metadata
    train_x, train_y, train_summaries = with_summaries(training, grid)
    val_x, _val_y, val_summaries = with_summaries(validation, grid)
    detector, applicability = fit_applicability(
        bundle.model,
        (train_x, train_y),
        val_x,
        [*train_summaries, *val_summaries],
        m.modality,
        rate=rate,
    )
    bundle.detector = detector
    bundle.metadata = replace(
        m,
        applicability=applicability,
        model_card=_with_applicability_card(m.model_card, applicability, inputs),
    )


def _with_applicability_card(card: str, applicability: dict[str, Any], inputs: str) -> str:
    """The model card with its applicability section (replacing an earlier one)."""
    checks, info = applicability["checks"], applicability["detector"]
    heading = "\n## Applicability check\n"
    fov = checks["fov_mm"]
    regions = " and ".join(p.lower() for p in checks.get("body_parts", ["any"]))
    text = (
        "Every scan is checked before its answer is trusted; one that fails is reported as "
        f"out of distribution, with the reason. Input checks: {inputs}; {regions} scans; a "
        f"field of view within x{FOV_FACTOR:g} of the {_size(fov['min'])} to "
        f"{_size(fov['max'])} mm seen in training; the body not cut off at the image edge. "
        "Feature check: Mahalanobis distance of the penultimate-layer features to the nearest "
        f"class mean (fitted on {info['n_train']} training phantoms), threshold "
        f"{info['threshold']:.2f} set on {info['n_validation']} validation phantoms for a "
        f"{info['false_abstention_rate']:.0%} false-abstention rate."
    )
    return replace_section(card, heading, textwrap.fill(text, 100))


def replace_section(card: str, heading: str, text: str) -> str:
    """``card`` with the section under ``heading`` (and all after it) replaced by ``text``."""
    return card.split(heading)[0].rstrip("\n") + "\n" + heading + "\n" + text + "\n"


def _size(values: Sequence[float]) -> str:
    return " x ".join(f"{v:g}" for v in values)


def add_saliency_choice(
    bundle: Bundle, volumes: Sequence[Volume], target_class: str | None
) -> None:
    """Record in ``bundle`` the saliency method that measured most faithful on ``volumes``
    (the map's own check, see :mod:`napari_scan_classifier.saliency`) for ``target_class``
    (None: each case's predicted class)."""
    choice = choose_saliency(bundle, list(volumes), target_class)
    bundle.metadata = with_saliency_choice(bundle.metadata, choice)


def _resume(checkpoints: Path, stages: Sequence[Stage]) -> tuple[Bundle | None, int]:
    """The last stage kept in ``checkpoints`` and how many stages it completes."""
    for done in range(len(stages) - 1, 0, -1):
        folder = checkpoints / stages[done - 1].name
        if folder.is_dir():
            return load_bundle(folder), done
    return None, 0


def earlier_stages(base: Bundle | None) -> list[dict[str, Any]]:
    """The training stages ``base`` records (none for a fresh network): the lineage a stage
    trained from it continues."""
    return [] if base is None else list(base.metadata.training.get("stages", []))


def _record_stage(bundle: Bundle, base: Bundle | None, stage: Stage) -> None:
    """Add this stage to the lineage the model card is written from."""
    m = bundle.metadata
    earlier = earlier_stages(base)
    validation = m.training["metrics"]["validation"]
    entry = {
        "name": stage.name,
        "data": m.training["data"],
        "epochs_run": m.training.get("epochs_run"),
        "validation_auc": validation["auc"],
    }
    bundle.metadata = replace(m, training={**m.training, "stages": [*earlier, entry]})


def lineage(bundle: Bundle) -> str:
    """The model card's list of stages."""
    return "\n".join(
        f"  {i}. {stage['name']}: {stage['data']}; validation AUC {fmt(stage['validation_auc'])}"
        for i, stage in enumerate(bundle.metadata.training["stages"], start=1)
    )


def span(values: tuple[float, float]) -> str:
    return "-".join(f"{v:g}" for v in values)


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def printer(verbose: bool, stage: str) -> Any:
    def report(event: TrainingEvent) -> None:
        if verbose and event.kind == "epoch":
            print(f"{stage}: {event.message}", flush=True)

    return report
