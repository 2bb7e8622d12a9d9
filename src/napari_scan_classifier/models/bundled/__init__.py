"""Models shipped inside the package. Each is a bundle folder whose ``bundle.json`` holds its model
card; ``demo_ct_lesion`` is made by ``python -m napari_scan_classifier.models.train_demo``."""

from __future__ import annotations

from pathlib import Path

from napari_scan_classifier.errors import InvalidBundleError
from napari_scan_classifier.models.bundle import Bundle, load_bundle

DEFAULT_MODEL = "demo_ct_lesion"


def bundled_model_path() -> Path:
    """The folder of the default shipped model (the synthetic-phantom CT lesion demo)."""
    return Path(__file__).parent / DEFAULT_MODEL


def bundled_names() -> list[str]:
    """Names of the models shipped inside the package (their folder names)."""
    root = Path(__file__).parent
    return sorted(p.name for p in root.iterdir() if (p / "bundle.json").is_file())


def named_bundle_path(name: str) -> Path | None:
    """The folder of the shipped model called ``name``, or None when none is called so."""
    return Path(__file__).parent / name if name in bundled_names() else None


def load_default_bundle() -> Bundle:
    """The default shipped model, loaded safely and validated like any other bundle."""
    if not bundled_model_path().is_dir():
        raise InvalidBundleError(
            "This installation has no bundled demo model: choose a model bundle, or make the demo "
            "model with `python -m napari_scan_classifier.models.train_demo --out DIR`"
        )
    return load_bundle(bundled_model_path())
