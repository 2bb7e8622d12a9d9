"""Which model should classify this scan? The one made for the scan's modality and body region.

A model answers every scan with some class, so handing an MR of the pelvis to a CT model of the
abdomen gives a number with no meaning. Here the scan decides:

1. **What the scan is** (:func:`identify`): its modality and body region, from the header where
   it says so (DICOM ``Modality`` and ``BodyPartExamined``; a NIfTI file this package wrote keeps
   its modality), else from the voxels. CT stores Hounsfield units: air around the body at about
   -1000 and soft tissue near 0 to 80. MR magnitude has no unit and no negative values. The region
   comes from the outline of the body in axial cross-sections, measured in millimetres in the
   patient's frame (so any acquisition orientation gives the same answer): a head is deeper
   (front to back) than wide, a trunk wider than deep. Anything else (a neck, a limb, a body cut
   off by the field of view) is left undecided rather than guessed.
2. **Which model** (:func:`choose`): among the shipped models and the user's installed ones
   (the latest version of each name), the one whose modality and body region match. When none
   does, the answer says so (``"no installed model covers MR pelvis: install or train one"``);
   it never falls back to the nearest model.

Every answer carries how it was decided, in words, for the Classify dock and the command line.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_scan_classifier.errors import ScanClassifierError
from napari_scan_classifier.models.bundle import (
    MODALITIES,
    Bundle,
    BundleMetadata,
    load_bundle,
    read_metadata,
)
from napari_scan_classifier.models.bundled import bundled_names, named_bundle_path
from napari_scan_classifier.outputs import models_folder
from napari_scan_classifier.volume import Volume

AUTO = "auto"  # the model argument that asks for the choice made here

# DICOM BodyPartExamined defined terms (PS3.16 CID 4031 and common vendor values) -> regions.
_BODY_PARTS = {
    "head": ("HEAD", "BRAIN", "SKULL", "ORBIT", "SELLA", "IAC", "SINUS", "FACE", "JAW", "TMJ"),
    "neck": ("NECK", "LARYNX", "THYROID", "CSPINE_NECK"),
    "chest": ("CHEST", "THORAX", "LUNG", "HEART", "MEDIASTINUM", "RIB", "STERNUM", "CLAVICLE"),
    "abdomen": ("ABDOMEN", "LIVER", "KIDNEY", "PANCREAS", "SPLEEN", "GALLBLADDER", "STOMACH"),
    "pelvis": ("PELVIS", "PROSTATE", "BLADDER", "UTERUS", "OVARY", "RECTUM", "HIP", "SACRUM"),
    "spine": ("SPINE", "CSPINE", "TSPINE", "LSPINE", "SSPINE", "COCCYX"),
    "breast": ("BREAST",),
    "upper limb": ("ARM", "SHOULDER", "ELBOW", "FOREARM", "WRIST", "HAND", "FINGER", "HUMERUS"),
    "lower limb": ("LEG", "THIGH", "KNEE", "ANKLE", "FOOT", "TOE", "FEMUR", "TIBIA", "EXTREMITY"),
}
_COMPOUND_PARTS = {
    "HEADNECK": ("head", "neck"),
    "CHESTABDOMEN": ("chest", "abdomen"),
    "ABDOMENPELVIS": ("abdomen", "pelvis"),
    "ABDPELVIS": ("abdomen", "pelvis"),
    "CHESTABDPELVIS": ("chest", "abdomen", "pelvis"),
    "CHESTABDOMENPELVIS": ("chest", "abdomen", "pelvis"),
}
TRUNK = ("chest", "abdomen", "pelvis")

# Intensities (on a subsample of the voxels)
CT_AIR_HU = (-1100.0, -850.0)  # air in Hounsfield units
CT_TISSUE_HU = (-150.0, 150.0)  # fat's upper end, water, soft tissue, blood
MIN_AIR_FRACTION = 0.01
MIN_TISSUE_FRACTION = 0.02
MAX_NEGATIVE_FRACTION = 0.001  # MR magnitude: (almost) no negative values
_SAMPLE_VOXELS = 500_000

# Body outline (millimetres, in axial slabs)
CT_BODY_HU = -500.0  # denser than air and lung
MR_BODY_FRACTION = 0.1  # of the way from the background (1st percentile) to the 99th percentile
SLAB_MM = 20.0
MIN_SLAB_POINTS = 50
HEAD_MAX_RATIO = 0.92  # width / depth of a head (adults about 0.8; a trunk about 1.3-1.6)
HEAD_WIDTH_MM = (100.0, 230.0)
TRUNK_MIN_RATIO = 1.2
MAX_EDGE_FRACTION = 0.02  # of the side faces the body may touch before it counts as cut off


class NoMatchingModelError(ScanClassifierError):
    """No installed model is made for the scan's modality and body region (or they are
    unknown): the message says which and what to do."""


# ------------------------------------------------------------------------------- the scan


@dataclass(frozen=True)
class ScanIdentity:
    """A scan's modality (``None``: not known) and the body regions it may show (empty: not
    known; several: the header names several, or only "a trunk" could be told), each with how
    it was decided."""

    modality: str | None
    regions: tuple[str, ...]
    modality_source: str
    region_source: str

    def describe(self) -> str:
        """``"MR head"``, ``"CT chest/abdomen/pelvis"``, ``"MR, region unknown"``."""
        modality = self.modality or "unknown modality"
        if not self.regions:
            return f"{modality}, region unknown"
        return f"{modality} {'/'.join(self.regions)}"

    def how(self) -> str:
        """How both were decided, in one sentence."""
        return f"modality from {self.modality_source}; region from {self.region_source}"


def identify(volume: Volume) -> ScanIdentity:
    """The scan's modality and body region, from its header where it has them, else from its
    voxels (see the module doc)."""
    sample = _sample(volume.voxels)
    modality, modality_source = _modality(volume, sample)
    regions, region_source = _regions(volume, modality, sample)
    return ScanIdentity(modality, regions, modality_source, region_source)


def _modality(volume: Volume, sample: np.ndarray) -> tuple[str | None, str]:
    stated = str(volume.modality or "").upper()
    header = _header_name(volume)
    if header == "the DICOM header" and stated not in ("", "OT"):
        return stated, f"the DICOM header (Modality {stated})"
    if stated in MODALITIES:
        return stated, f"the NIfTI header ({stated})" if header else "the scan's modality field"
    return modality_from_values(sample)


def _header_name(volume: Volume) -> str:
    source = str(volume.metadata.get("source_format") or "")
    if source == "DICOM":
        return "the DICOM header"
    return "the NIfTI header" if source.startswith("NIfTI") else ""


def modality_from_values(sample: np.ndarray) -> tuple[str | None, str]:
    """CT, MR or None from the intensities, with the reason in words."""
    values = np.asarray(sample, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None, "nothing: the voxels hold no finite value"
    air = float(np.mean((values >= CT_AIR_HU[0]) & (values <= CT_AIR_HU[1])))
    tissue = float(np.mean((values >= CT_TISSUE_HU[0]) & (values <= CT_TISSUE_HU[1])))
    negative = float(np.mean(values < 0))
    if air >= MIN_AIR_FRACTION and tissue >= MIN_TISSUE_FRACTION:
        return "CT", (
            f"the intensities ({air:.0%} of the voxels near -1000, air in Hounsfield units, and "
            f"{tissue:.0%} near 0, soft tissue)"
        )
    if negative <= MAX_NEGATIVE_FRACTION:
        return "MR", (
            "the intensities (no negative values and no air at -1000: MR magnitude in "
            "arbitrary units)"
        )
    return None, (
        f"the intensities, which fit neither CT (air near -1000 HU in {air:.1%} of the voxels) "
        f"nor MR ({negative:.1%} of the voxels negative)"
    )


def _regions(
    volume: Volume, modality: str | None, sample: np.ndarray
) -> tuple[tuple[str, ...], str]:
    part = str(volume.metadata.get("body_part") or "").strip().upper()
    found = regions_of_body_part(part)
    if found:
        return found, f"{_header_name(volume) or 'the header'} (BodyPartExamined {part})"
    regions, how = regions_from_outline(volume, modality, sample)
    if part:
        how = f"{how} (the header's BodyPartExamined {part} names no region known here)"
    return regions, how


def regions_of_body_part(part: str) -> tuple[str, ...]:
    """The regions a DICOM BodyPartExamined value names (empty when it names none we know)."""
    key = part.strip().upper().replace(" ", "").replace("-", "")
    if key in _COMPOUND_PARTS:
        return _COMPOUND_PARTS[key]
    for region, terms in _BODY_PARTS.items():
        if key in terms:
            return (region,)
    return ()


def regions_from_outline(
    volume: Volume, modality: str | None, sample: np.ndarray | None = None
) -> tuple[tuple[str, ...], str]:
    """The region from the body's cross-section: (regions, how it was decided)."""
    if modality not in MODALITIES:
        return (), "nothing: the body outline needs the modality"
    voxels, affine = _coarse(volume)
    values = _sample(volume.voxels) if sample is None else sample
    threshold = CT_BODY_HU if modality == "CT" else _mr_body_threshold(values)
    body = _largest_component(voxels > threshold)
    if not body.any():
        return (), "nothing: no body found in the image"
    if _touches_sides(body, affine):
        return (), "nothing: the body is cut off at the edge of the field of view"
    width, depth = _cross_section_mm(body, affine)
    if not (width > 0 and depth > 0):
        return (), "nothing: the body outline is too small to measure"
    ratio = width / depth
    shape = f"the body outline ({width:.0f} mm wide, {depth:.0f} mm front to back)"
    if ratio <= HEAD_MAX_RATIO and HEAD_WIDTH_MM[0] <= width <= HEAD_WIDTH_MM[1]:
        return ("head",), f"{shape}: deeper than wide, the shape of a head"
    if ratio >= TRUNK_MIN_RATIO:
        return TRUNK, f"{shape}: wider than deep, the shape of a trunk"
    return (), f"{shape}: neither a head's nor a trunk's shape"


def _mr_body_threshold(values: np.ndarray) -> float:
    """Brighter than the background noise, whatever the unit and offset of the intensities."""
    background, bright = np.nanpercentile(values, [1.0, 99.0])
    return float(background + MR_BODY_FRACTION * (bright - background))


def _sample(voxels: np.ndarray) -> np.ndarray:
    spatial = voxels[0] if voxels.ndim == 4 else voxels
    step = max(1, round((spatial.size / _SAMPLE_VOXELS) ** (1 / 3)))
    return np.asarray(spatial[::step, ::step, ::step], dtype=np.float32).ravel()


def _coarse(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """The spatial voxels on a grid of about half a million at most, and that grid's affine."""
    spatial = volume.voxels[0] if volume.voxels.ndim == 4 else volume.voxels
    step = max(1, round((spatial.size / _SAMPLE_VOXELS) ** (1 / 3)))
    affine = volume.affine.copy()
    affine[:3, :3] = affine[:3, :3] * step
    return np.asarray(spatial[::step, ::step, ::step]), affine


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (1 + int(np.argmax(sizes)))


def _in_plane_axes(affine: np.ndarray) -> list[int]:
    """The array axes running closest to the world's front-back and left-right axes."""
    directions = np.abs(affine[:3, :3]) / np.linalg.norm(affine[:3, :3], axis=0)
    return sorted({int(np.argmax(directions[1])), int(np.argmax(directions[2]))})


def _touches_sides(body: np.ndarray, affine: np.ndarray) -> bool:
    """Whether the body reaches the image faces around it (not the first and last slices)."""
    faces = []
    for axis in _in_plane_axes(affine):
        faces += [np.take(body, 0, axis=axis), np.take(body, -1, axis=axis)]
    return max(float(face.mean()) for face in faces) > MAX_EDGE_FRACTION


def _cross_section_mm(body: np.ndarray, affine: np.ndarray) -> tuple[float, float]:
    """Median over axial slabs of the body's left-right width and front-back depth (mm)."""
    index = np.argwhere(body).astype(np.float64)
    world = index @ affine[:3, :3].T + affine[:3, 3]  # (inferior, posterior, left)
    slab = np.floor(world[:, 0] / SLAB_MM)
    widths, depths = [], []
    for level in np.unique(slab):
        points = world[slab == level]
        if len(points) >= MIN_SLAB_POINTS:
            extent = points.max(axis=0) - points.min(axis=0)
            depths.append(extent[1])
            widths.append(extent[2])
    if not widths:
        return 0.0, 0.0
    return float(np.median(widths)), float(np.median(depths))


# ------------------------------------------------------------------------------- the models


@dataclass(frozen=True)
class ModelEntry:
    """One model that can be chosen: where it is (a shipped model by its name), its modality and
    body region (``None`` when its bundle records none)."""

    name: str
    version: int
    modality: str
    region: str | None
    location: str
    shipped: bool
    created: str

    def describe(self) -> str:
        """``"demo_ct_lesion v5 for CT abdomen"``."""
        return f"{self.name} v{self.version} for {self.modality} {self.region or '(no region)'}"


def model_region(metadata: BundleMetadata) -> str | None:
    """The model's body region: ``body_region``, else (bundles saved before it was recorded)
    the one region its training scans' headers all named, else None."""
    if metadata.body_region:
        return metadata.body_region
    parts = (metadata.applicability.get("checks") or {}).get("body_parts") or []
    regions = {region for part in parts for region in regions_of_body_part(str(part))}
    return regions.pop() if len(regions) == 1 else None


def installed_models(folder: str | os.PathLike[str] | None = None) -> list[ModelEntry]:
    """The shipped models and those in ``folder`` (default :func:`models_folder`), the latest
    version of each name (a version in ``folder`` wins a tie). Bundles whose ``bundle.json``
    cannot be read are left out (``models`` lists them with the reason)."""
    found = [(named_bundle_path(name), True) for name in bundled_names()]
    root = Path(folder) if folder is not None else models_folder()
    if root.is_dir():
        found += [(p, False) for p in sorted(root.iterdir()) if (p / "bundle.json").is_file()]
    latest: dict[str, ModelEntry] = {}
    for path, shipped in found:
        try:
            m = read_metadata(path)
        except ScanClassifierError:
            continue
        entry = ModelEntry(
            m.name,
            m.version,
            m.modality,
            model_region(m),
            m.name if shipped else str(path),
            shipped,
            m.created,
        )
        held = latest.get(m.name)
        if held is None or (entry.version, not shipped) > (held.version, not held.shipped):
            latest[m.name] = entry
    return sorted(latest.values(), key=lambda e: e.name)


# ------------------------------------------------------------------------------- the choice


@dataclass(frozen=True)
class Choice:
    """The model for a scan (None: none covers it), the headline (``"MR head: demo_mr_brain"``
    or why there is none) and how the scan was identified."""

    identity: ScanIdentity
    model: ModelEntry | None
    reason: str

    def explanation(self) -> str:
        """The headline and how it was decided, for a person."""
        return f"{self.reason}; {self.identity.how()}"

    def to_dict(self) -> dict[str, object]:
        return {
            "model": None if self.model is None else self.model.name,
            "version": None if self.model is None else self.model.version,
            "reason": self.reason,
            "modality": self.identity.modality,
            "regions": list(self.identity.regions),
            "how": self.identity.how(),
        }

    def require(self) -> ModelEntry:
        """The chosen model, or NoMatchingModelError with the reason."""
        if self.model is None:
            raise NoMatchingModelError(self.explanation())
        return self.model


def choose(identity: ScanIdentity, models: Sequence[ModelEntry]) -> Choice:
    """The model whose modality and region match the scan's; several: the user's installed one
    before a shipped one, then the newest. None when the scan's modality or region is unknown
    or no model matches."""
    scan = identity.describe()
    if identity.modality is None:
        return Choice(identity, None, "could not tell whether the scan is CT or MR: choose a model")
    if identity.modality not in MODALITIES:
        return Choice(
            identity,
            None,
            f"no installed model covers {identity.modality} scans: models are made for CT or MR",
        )
    if not identity.regions:
        return Choice(
            identity,
            None,
            f"could not tell the body region of this {identity.modality} scan: choose a model",
        )
    matching = [
        m for m in models if m.modality == identity.modality and m.region in identity.regions
    ]
    if not matching:
        return Choice(
            identity,
            None,
            f"no installed model covers {scan}: install or train one{_installed(models)}",
        )
    best = max(matching, key=lambda m: (not m.shipped, m.created, m.name))
    region = "" if len(identity.regions) == 1 else f", a model of the {best.region}"
    reason = f"{scan}: {best.name}{region}"
    others = [m.name for m in matching if m is not best]
    if others:
        reason += f" (also matching: {', '.join(others)})"
    return Choice(identity, best, reason)


def choose_model(volume: Volume, models: Sequence[ModelEntry] | None = None) -> Choice:
    """Identify ``volume`` and choose among ``models`` (default: :func:`installed_models`)."""
    return choose(identify(volume), installed_models() if models is None else models)


class Chooser:
    """Chooses a model per scan among ``models`` (default: :func:`installed_models`, read once)
    and loads each chosen model once."""

    def __init__(self, models: Sequence[ModelEntry] | None = None) -> None:
        self.models = list(installed_models() if models is None else models)
        self._bundles: dict[str, Bundle] = {}

    def choose(self, volume: Volume) -> Choice:
        return choose(identify(volume), self.models)

    def bundle(self, entry: ModelEntry) -> Bundle:
        """The model of ``entry``, loaded and validated (once)."""
        if entry.location not in self._bundles:
            self._bundles[entry.location] = load_bundle(bundle_path(entry))
        return self._bundles[entry.location]


def bundle_path(entry: ModelEntry) -> Path:
    """Where ``entry``'s bundle is on this computer (a shipped model by its name)."""
    shipped = named_bundle_path(entry.location) if entry.shipped else None
    return shipped if shipped is not None else Path(entry.location)


def is_auto(model: object) -> bool:
    """Whether a model argument asks for the choice by the scan."""
    return isinstance(model, str) and model.strip().lower() == AUTO


def _installed(models: Iterable[ModelEntry]) -> str:
    listed = [m.describe() for m in models]
    return f" (installed: {', '.join(listed)})" if listed else " (none is installed)"
