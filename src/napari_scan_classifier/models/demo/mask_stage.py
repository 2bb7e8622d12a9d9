"""What the demos' first, lesion-mask-supervised stages share (:mod:`.localise` for CT cells,
:mod:`.slices` for MR slices): a fresh seeded network, epochs of ``fit`` with the validation AUC
after each, and the version-1 bundle whose lineage holds the stage. Written by hand because the
training pipeline (:mod:`napari_scan_classifier.training`) trains on scan labels only, as a
user's data has them; these stages add a second, per-location target."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import keras
import numpy as np

from napari_scan_classifier.datasets import LabelledData
from napari_scan_classifier.evaluation import evaluate
from napari_scan_classifier.models.architectures import ARCHITECTURES
from napari_scan_classifier.models.bundle import Bundle, BundleMetadata
from napari_scan_classifier.models.demo.common import Grid, Stage, earlier_stages
from napari_scan_classifier.training.config import BATCHNORM_MOMENTUM
from napari_scan_classifier.training.model import volume_logits

Arrays = tuple[np.ndarray, dict[str, np.ndarray]]
# An epoch's training data: model-grid arrays (N, D, H, W) and the targets by output name.
EpochData = Callable[[int], Arrays]


class SlidingChunks:
    """Each epoch's training data from numbered chunks of phantoms: epoch ``e`` trains on chunks
    ``e`` to ``e + window - 1``, so each epoch brings one fresh chunk and retires the oldest,
    and no phantom is seen more than ``window`` times. Why: phantoms cost nothing to draw but
    time, and on the same ones epoch after epoch the networks learned those phantoms rather than
    the lesions (see :mod:`.slices`); the window trades drawing time for training time."""

    def __init__(self, chunk: Callable[[int], Arrays], window: int) -> None:
        self.chunk = chunk
        self.window = window
        self._drawn: dict[int, Arrays] = {}

    def __call__(self, epoch: int) -> Arrays:
        wanted = range(epoch, epoch + self.window)
        self._drawn = {c: self._drawn.get(c) or self.chunk(c) for c in wanted}
        parts = [self._drawn[c] for c in wanted]
        x = np.concatenate([x for x, _ in parts])
        targets = {key: np.concatenate([t[key] for _, t in parts]) for key in parts[0][1]}
        return x, targets


@dataclass(frozen=True)
class StageRun:
    """How a mask stage trains: epochs, optimiser step, network width, batches, seed; and what
    its phantoms were (``description``, for the lineage)."""

    epochs: int
    learning_rate: float
    width: int
    batch_size: int
    seed: int
    description: str
    verbose: bool = True

    @classmethod
    def of(
        cls,
        stage: Stage,
        width: int,
        batch_size: int,
        seed: int,
        description: str,
        verbose: bool = True,
    ) -> StageRun:
        """A recipe's stage (its epochs and learning rate) with the run's settings."""
        return cls(stage.epochs, stage.learning_rate, width, batch_size, seed, description, verbose)


def train_stage(
    model: keras.Model,
    twin: keras.Model,
    location_losses: Mapping[str, Callable[[Any, Any], Any]],
    data: EpochData,
    validation: LabelledData,
    grid: Grid,
    run: StageRun,
    *,
    name: str,
    modality: str,
    architecture: str,
    base: Bundle | None = None,
    scored: keras.Model | None = None,
) -> Bundle:
    """Compile ``twin`` (``model``'s scan logits plus the per-location outputs named in
    ``location_losses``; compiled in ``model``'s stead, since a saved custom loss would be code),
    fit it on each epoch's ``data`` and return ``model`` as the stage's bundle. With ``scored``
    (a stage that trains only part of ``model``, without its scan logits), the validation AUC
    is that of ``scored``'s output and ``twin`` has no scan loss. ``base``: the stage's network
    came from that bundle, whose stages the new one's lineage continues."""
    losses = dict(location_losses)
    if scored is None:
        losses["volume"] = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    twin.compile(keras.optimizers.Adam(run.learning_rate), losses)
    aucs = fit_epochs(
        twin,
        model if scored is None else scored,
        data,
        validation,
        epochs=run.epochs,
        batch_size=run.batch_size,
        name=name,
        verbose=run.verbose,
    )
    return stage_bundle(
        model,
        grid,
        name=name,
        modality=modality,
        architecture=architecture,
        description=run.description,
        aucs=aucs,
        earlier=earlier_stages(base),
    )


def fresh_model(architecture: str, grid: Grid, width: int, seed: int) -> keras.Model:
    """A new network, seeded, with the batch-norm momentum of the training pipeline (moving
    statistics keep up)."""
    keras.utils.set_random_seed(seed)
    model = ARCHITECTURES[architecture]((*grid.input_shape, 1), len(grid.classes), width=width)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = BATCHNORM_MOMENTUM
    return model


def regridded(bundle: Bundle, grid: Grid, run: StageRun) -> Bundle:
    """``bundle`` with its network rebuilt on ``grid``'s input shape, weights and all: the
    network is convolutional up to a global pooling, so its weights fit any grid, and a stage
    on a finer grid refines what cheaper stages on a coarser one learnt."""
    if tuple(bundle.metadata.input_shape) == tuple(grid.input_shape):
        return bundle
    model = fresh_model(bundle.metadata.architecture, grid, run.width, run.seed)
    model.set_weights(bundle.model.get_weights())
    metadata = replace(bundle.metadata, input_shape=tuple(grid.input_shape))
    return replace(bundle, model=model, metadata=metadata)


def fit_epochs(
    trained: keras.Model,
    scored: keras.Model,
    data: EpochData,
    validation: LabelledData,
    *,
    epochs: int,
    batch_size: int,
    name: str,
    verbose: bool,
) -> list[float]:
    """Fit ``trained`` (compiled, sharing its layers with ``scored``) epoch by epoch, each on
    its own ``data``; the validation macro AUC of ``scored``'s scan logits after each."""
    val = validation.splits[next(iter(validation.splits))]
    aucs = []
    for epoch in range(epochs):
        x, targets = data(epoch)
        history = trained.fit(x[..., None], dict(targets), batch_size=batch_size, verbose=0)
        logits = volume_logits(scored, val.x, batch_size)
        aucs.append(evaluate(val.y, keras.ops.softmax(logits).numpy(), validation.class_names).auc)
        if verbose:
            loss = {k: round(float(v[0]), 4) for k, v in history.history.items()}
            print(f"{name}: epoch {epoch + 1}/{epochs} {loss} val AUC {aucs[-1]:.3f}", flush=True)
    return aucs


def stage_bundle(
    model: keras.Model,
    grid: Grid,
    *,
    name: str,
    modality: str,
    architecture: str,
    description: str,
    aucs: Sequence[float],
    earlier: Sequence[Mapping[str, Any]] = (),
) -> Bundle:
    """The stage's network as a version-1 bundle whose training record holds the ``earlier``
    stages it started from and this one."""
    stage: dict[str, Any] = {
        "name": name,
        "data": description,
        "epochs_run": len(aucs),
        "validation_auc": aucs[-1],
    }
    metadata = BundleMetadata(
        name=name,
        version=1,
        classes=list(grid.classes),
        modality=modality,
        task="volume",
        input_shape=grid.input_shape,
        target_spacing_mm=grid.spacing,
        intensity=dict(grid.intensity),
        architecture=architecture,
        training={
            "data": description,
            "epochs_run": len(aucs),
            "metrics": {"validation": {"auc": aucs[-1]}},
            "history": {"val_auc": [round(a, 5) for a in aucs]},
            "stages": [*earlier, stage],
        },
        description=f"{architecture} trained on {description} with lesion masks",
    )
    return Bundle(metadata, model)
