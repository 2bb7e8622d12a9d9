"""The bundle format's file names, allowed values and size limits."""

from __future__ import annotations

FORMAT_VERSION = 1
MODEL_FILE = "model.keras"
METADATA_FILE = "bundle.json"
DETECTOR_FILE = "applicability.npz"
MODALITIES = ("CT", "MR")
# Body regions a model may be made for (``body_region``); the scan's region is matched against
# them when a model is chosen by the scan (see choice.py).
REGIONS = (
    "head",
    "neck",
    "chest",
    "abdomen",
    "pelvis",
    "spine",
    "breast",
    "upper limb",
    "lower limb",
)
TASKS = ("volume", "region")
TRUSTED_MODULES = ("keras", "napari_scan_classifier")
MAX_METADATA_BYTES = 1_000_000
MAX_KERAS_CONFIG_BYTES = 50_000_000
# Memory one voxel of the model grid costs at inference: float32 input plus the full-resolution
# feature maps of a first convolution of 16 filters (an estimate, checked before loading).
BYTES_PER_GRID_VOXEL = 4 * (1 + 16)
