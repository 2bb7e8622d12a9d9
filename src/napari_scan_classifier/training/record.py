"""What a training run writes into the new bundle: bundle.json's ``training`` record, the
metadata, a free version folder, the plots."""

from __future__ import annotations

from typing import TYPE_CHECKING

from napari_scan_classifier.training.calibration import Calibration
from napari_scan_classifier.training.config import TrainingConfig
from napari_scan_classifier.training.data import Recipe
from napari_scan_classifier.training.fit import Fitted

if TYPE_CHECKING:
    from napari_scan_classifier.training.pipeline import TrainingResult

import io
import re
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from napari_scan_classifier.datasets import LabelledData
from napari_scan_classifier.evaluation import (
    EvaluationReport,
)
from napari_scan_classifier.models import (
    Bundle,
    BundleMetadata,
    derive,
)


def training_info(
    data: LabelledData,
    config: TrainingConfig,
    counts: dict[str, dict[str, int]],
    split_note: str,
    fitted: Fitted,
    report: EvaluationReport,
    uncalibrated: EvaluationReport,
    base_report: EvaluationReport | None,
    devices: tuple[str, ...],
    notes: list[str],
) -> dict[str, Any]:
    """What bundle.json records about this training run (no paths, no patient data)."""
    settings = asdict(config)
    for key in (
        "architecture",
        "input_shape",
        "target_spacing_mm",
        "modality",
        "intensity",
        "name",
        "devices",
        "classes",
        "label_names",
    ):
        settings.pop(key)
    metrics = {
        "validation": {
            **metrics_summary(report),
            "ece_before_calibration": uncalibrated.ece,
            "accuracy_before_calibration": uncalibrated.accuracy,
            "majority_rate": max(report.class_counts.values()) / max(report.n, 1),
        }
    }
    if base_report is not None:
        metrics["validation_base_model"] = metrics_summary(base_report)
    weights = {report.class_names[c]: round(w, 4) for c, w in fitted.class_weights.items()}
    return {
        "data": data.description,
        "validation": split_note,
        "class_counts": counts,
        "class_weights": weights,
        "settings": settings,
        "epochs_run": fitted.epochs_run,
        "best_epoch": fitted.best_epoch,
        "history": {k: [round(v, 5) for v in values] for k, values in fitted.history.items()},
        "metrics": metrics,
        "devices": list(devices),
        "notes": notes,
    }


def metrics_summary(report: EvaluationReport) -> dict[str, Any]:
    """The headline figures, each class's one-vs-rest AUC and the confusion matrix."""
    summary = report.to_dict()
    headline = ("n", "auc", "accuracy", "sensitivity", "specificity", "ece", "ece_by_chance")
    return {
        **{key: summary[key] for key in headline},
        "per_class_auc": {name: m["auc"] for name, m in summary["per_class"].items()},
        "confusion_matrix": summary["confusion_matrix"],
    }


def new_metadata(
    recipe: Recipe,
    base: Bundle | None,
    classes: tuple[str, ...],
    calibration: Calibration,
    rule: dict[str, Any],
    info: dict[str, Any],
    config: TrainingConfig,
    description: str,
) -> BundleMetadata:
    auc = info["metrics"]["validation"]["auc"]
    calibrated = {
        "temperature": calibration.temperature,
        "class_bias": list(calibration.bias),
        "decision_rule": rule,
        "calibration": calibration.record(),
        "test_time_mirror": recipe.test_time_mirror,
    }
    if base is not None:
        old = base.metadata
        card = (
            f"{old.model_card}\n\n## Fine-tuned from version {old.version}\nOn {description}; "
            f"validation AUC {auc}."
        ).strip()
        return derive(
            old,
            name=config.name or old.name,
            classes=list(classes),
            training=info,
            model_card=card,
            **calibrated,
        )
    return BundleMetadata(
        name=config.name or "scan-classifier",
        version=1,
        classes=list(classes),
        modality=recipe.modality,
        task="volume",
        input_shape=recipe.input_shape,
        target_spacing_mm=recipe.target_spacing_mm,
        intensity=recipe.intensity,
        architecture=recipe.architecture,
        training=info,
        **calibrated,
        description=f"{recipe.architecture} trained on {description}",
        model_card=(
            f"Trained from scratch on {description}; validation AUC {auc}. A research model: "
            "check it on your own held-out cases before relying on it."
        ),
    )


def free_bundle_path(out: Path, result: TrainingResult) -> Path:
    """``out/<name>-v<version>``, raising the version until the folder name is free."""
    metadata = result.bundle.metadata
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", metadata.name).strip("._") or "model"
    version = metadata.version
    while (out / f"{stem}-v{version}").exists():
        version += 1
    if version != metadata.version:
        result.bundle.metadata = replace(metadata, version=version)
    return out / f"{stem}-v{version}"


def png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
