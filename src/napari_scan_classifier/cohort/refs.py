"""How a worker finds the client's models and proves it holds the same ones (path, SHA-256)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_scan_classifier.choice import ModelEntry, bundle_path, installed_models
from napari_scan_classifier.cohort.inputs import _HASH_BLOCK
from napari_scan_classifier.models import Bundle
from napari_scan_classifier.models.bundle import MODEL_FILE, read_metadata
from napari_scan_classifier.models.bundled import bundled_model_path


@dataclass(frozen=True)
class BundleRef:
    """What a worker needs to load the client's bundle and prove it has the same one: its path
    (None: the bundled model of the worker's own installation) and the SHA-256 of its files."""

    path: str | None
    name: str
    version: int
    sha256: str

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


@dataclass(frozen=True)
class AutoRef:
    """The models each series chooses from by its modality and body region (see choice.py),
    with the reference a worker loads each by."""

    models: tuple[tuple[ModelEntry, BundleRef], ...]

    @property
    def entries(self) -> list[ModelEntry]:
        return [entry for entry, _ in self.models]

    def ref_of(self, entry: ModelEntry) -> BundleRef:
        return next(ref for known, ref in self.models if known == entry)


def bundle_ref(bundle: Bundle) -> BundleRef:
    """The bundle as workers find it; the bundled model travels as None (each installation has
    its own copy, checked by hash)."""
    source = Path(bundle.path or bundled_model_path()).resolve()
    bundled = source == bundled_model_path().resolve()
    meta = bundle.metadata
    return BundleRef(
        None if bundled else str(source), meta.name, meta.version, model_sha256(bundle)
    )


def model_sha256(bundle: Bundle) -> str:
    """SHA-256 of the model file: as ``bundle.json`` records it (checked on load), else of
    ``model.keras`` in the folder or of the .zip."""
    recorded = bundle.metadata.files.get(MODEL_FILE)
    if recorded:
        return recorded
    source = Path(bundle.path or bundled_model_path())
    return _file_sha256(source if source.is_file() else source / MODEL_FILE)


def auto_ref(models: Sequence[ModelEntry] | None = None) -> AutoRef:
    """The installed models (default: :func:`~.choice.installed_models`) as workers find them:
    shipped ones by name, the others by path, each with the SHA-256 of its model file."""
    pairs = []
    for entry in installed_models() if models is None else models:
        path = bundle_path(entry)
        sha256 = read_metadata(path).files.get(MODEL_FILE) or _file_sha256(path / MODEL_FILE)
        pairs.append((entry, BundleRef(entry.location, entry.name, entry.version, sha256)))
    return AutoRef(tuple(pairs))


def _file_sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as stream:
        while block := stream.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()
