"""npe2 writers: an image or labels layer to NIfTI, on the geometry the layer is shown with.

A mask drawn over a scan and saved here overlays that scan exactly in any other viewer, because the
file carries the layer's affine (converted to RAS by the core), not the array alone.
"""

from __future__ import annotations

from typing import Any

from napari_scan_classifier.io.nifti import save_nifti
from napari_scan_classifier.plugin.layers import layer_data_to_volume


def write_image(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Save an image layer (voxels, modality and geometry) as .nii or .nii.gz."""
    return [str(save_nifti(layer_data_to_volume(data, meta, "image"), path))]


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Save a labels layer (integer mask) as .nii or .nii.gz."""
    return [str(save_nifti(layer_data_to_volume(data, meta, "labels"), path))]
