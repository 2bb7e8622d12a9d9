"""Training data: the model's input recipe, loading, classes and the validation split."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from napari_scan_classifier import datasets
from napari_scan_classifier.datasets import LabelledData, Split, n_cases
from napari_scan_classifier.errors import (
    TrainingError,
)
from napari_scan_classifier.models import (
    Bundle,
)
from napari_scan_classifier.training.config import (
    DEFAULT_INTENSITY,
    MIN_VALIDATION_PER_CLASS,
    TrainingConfig,
    TrainingEvent,
)
from napari_scan_classifier.training.guardrails import refuse_new_classes


@dataclass(frozen=True)
class Recipe:
    """What fixes the model's input: from the base bundle, or from the config from scratch; and
    whether it answers with the mirror image too (the config's choice, else the base's)."""

    architecture: str
    input_shape: tuple[int, int, int]
    target_spacing_mm: tuple[float, float, float] | None
    modality: str
    intensity: dict[str, Any]
    test_time_mirror: bool = False


def recipe_for(config: TrainingConfig, base: Bundle | None) -> Recipe:
    mirror = config.test_time_mirror
    if base is not None:
        m = base.metadata
        return Recipe(
            m.architecture,
            m.input_shape,
            m.target_spacing_mm,
            m.modality,
            dict(m.intensity),
            m.test_time_mirror if mirror is None else mirror,
        )
    intensity = config.intensity or DEFAULT_INTENSITY[config.modality]
    return Recipe(
        config.architecture,
        config.input_shape,
        config.target_spacing_mm,
        config.modality,
        dict(intensity),
        bool(mirror),
    )


def load_data(
    source: str | Path | LabelledData,
    recipe: Recipe,
    progress: Callable[[TrainingEvent], None] | None,
    stop: Callable[[], bool],
    class_names: Sequence[str] | None = None,
) -> LabelledData:
    if isinstance(source, LabelledData):
        data = source
    else:

        def loaded(done: int, total: int) -> None:
            if progress is not None:
                progress(TrainingEvent("load", 0, 0, done, total))

        data = datasets.load_source(
            source,
            recipe.input_shape,
            recipe.target_spacing_mm,
            recipe.intensity,
            progress=loaded,
            cancel=stop,
            class_names=class_names,
        )
    check_data_fits(data, recipe.input_shape, recipe.modality)
    if "train" not in data.splits and datasets.ALL not in data.splits:
        raise TrainingError(
            f"The data ({data.description}) have no training cases (train_images): they can "
            "evaluate a model but not train one"
        )
    return data


def check_data_fits(data: LabelledData, shape: Sequence[int], modality: str) -> None:
    if tuple(data.shape) != tuple(shape):
        raise TrainingError(
            f"The data ({data.description}) are on a {data.shape} grid but the model takes "
            f"{tuple(shape)}"
        )
    other = [m for m in data.modalities if m != modality]
    if other:
        raise TrainingError(
            f"The data ({data.description}) hold {', '.join(other)} cases but the model is for "
            f"{modality}; use cases of one modality"
        )


def model_classes(
    data: LabelledData, base: Bundle | None, config: TrainingConfig
) -> tuple[tuple[str, ...], list[str]]:
    """The model's output classes, and notes on classes the base did not know."""
    totals = {name: 0 for name in data.class_names}
    for split in (s for key, s in data.splits.items() if key != "test"):
        for name, n in split.counts(data.class_names).items():
            totals[name] += n
    present = [name for name, n in totals.items() if n > 0]
    if len(present) < 2:
        only = ", ".join(f"'{name}' ({n_cases(n)})" for name, n in totals.items() if n) or "none"
        raise TrainingError(
            f"The training data ({data.description}) have one class only ({only}); a "
            "classifier needs labelled cases of at least two classes"
        )
    if base is None:
        return _scratch_classes(present, config), []
    known = list(base.metadata.classes)
    new = [name for name in present if name not in known]
    if not new:
        return tuple(known), []
    if not config.allow_new_classes:
        refuse_new_classes(new, known, totals, base.metadata.version)
    listing = ", ".join(f"'{name}' ({n_cases(totals[name])})" for name in new)
    note = (
        f"Classes the base model (version {base.metadata.version}) did not know: {listing}. "
        f"Its output layer was rebuilt for {len(known) + len(new)} classes, keeping the "
        "encoder's weights and the old classes' outputs."
    )
    return (*known, *new), [note]


def _scratch_classes(present: list[str], config: TrainingConfig) -> tuple[str, ...]:
    if config.classes is None:
        return tuple(present)
    if sorted(config.classes) != sorted(present):
        raise TrainingError(
            f"The configured classes {list(config.classes)} differ from the classes in the "
            f"data {present}"
        )
    return tuple(config.classes)


def split_cases(
    data: LabelledData, classes: tuple[str, ...], config: TrainingConfig
) -> tuple[Split, Split, str]:
    """Training and validation cases, labels as indices into ``classes``."""

    def relabel(split: Split) -> Split:
        return Split(split.x, remap(split.y, data.class_names, classes), split.axes)

    if "train" in data.splits and "val" in data.splits:
        train_cases, val_cases = relabel(data.splits["train"]), relabel(data.splits["val"])
        how = "the source's own validation split"
    else:
        whole = relabel(data.splits[datasets.ALL if datasets.ALL in data.splits else "train"])
        train_cases, val_cases = _stratified(whole, classes, config)
        how = f"stratified split, {config.validation_fraction:.0%} for validation"
    _check_split(train_cases, val_cases, classes, config)
    return train_cases, val_cases, how


def _stratified(
    whole: Split, classes: tuple[str, ...], config: TrainingConfig
) -> tuple[Split, Split]:
    try:
        train_idx, val_idx = train_test_split(
            np.arange(len(whole)),
            test_size=config.validation_fraction,
            stratify=whole.y,
            random_state=config.seed,
        )
    except ValueError:
        raise TrainingError(_too_few(whole.counts(classes), config)) from None
    return whole.subset(np.sort(train_idx)), whole.subset(np.sort(val_idx))


def _check_split(
    train_cases: Split, val_cases: Split, classes: tuple[str, ...], config: TrainingConfig
) -> None:
    train_counts, val_counts = train_cases.counts(classes), val_cases.counts(classes)
    for name in classes:
        total = train_counts[name] + val_counts[name]
        if total and (val_counts[name] < MIN_VALIDATION_PER_CLASS or train_counts[name] < 1):
            totals = {c: train_counts[c] + val_counts[c] for c in classes}
            raise TrainingError(_too_few(totals, config, val_counts))


def _too_few(
    totals: Mapping[str, int], config: TrainingConfig, val: Mapping[str, int] | None = None
) -> str:
    listing = ", ".join(f"'{name}': {n}" for name, n in totals.items() if n)
    got = (
        ""
        if val is None
        else (
            " (validation: " + ", ".join(f"'{c}': {n}" for c, n in val.items() if totals[c]) + ")"
        )
    )
    return (
        f"Too few cases to train and validate: every class needs at least "
        f"{MIN_VALIDATION_PER_CLASS} validation cases and one training case; cases per class "
        f"{listing}{got}, validation fraction {config.validation_fraction:g}. Add cases or raise "
        "the validation fraction"
    )


def remap(y: np.ndarray, source_names: Sequence[str], target_names: Sequence[str]) -> np.ndarray:
    """Label indices into ``source_names`` as indices into ``target_names`` (-1: not there)."""
    lookup = np.array(
        [list(target_names).index(n) if n in target_names else -1 for n in source_names], dtype=int
    )
    return lookup[y]
