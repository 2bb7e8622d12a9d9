"""What of a scan a case stores: lossless voxels, label masks, and the hash that identifies it."""

from __future__ import annotations

import hashlib

import numpy as np

from napari_scan_classifier.errors import CaseLibraryError
from napari_scan_classifier.volume import Volume


def content_hash(voxels: np.ndarray, affine: np.ndarray) -> str:
    """sha256 of voxels (little-endian bytes, shape, dtype) and the affine.

    The affine is hashed as NIfTI stores it (float32) and rounded to 0.1 um, so a case loaded
    back from disk hashes exactly as it did when it was added.
    """
    data = np.ascontiguousarray(voxels, dtype=voxels.dtype.newbyteorder("<"))
    geometry = np.round(np.asarray(affine, dtype=np.float32).astype("<f8"), 4) + 0.0  # no -0.0
    digest = hashlib.sha256(f"{data.dtype.str}|{data.shape}|".encode())
    digest.update(geometry.tobytes())
    digest.update(data.reshape(-1).view(np.uint8))
    return digest.hexdigest()


def scan_key(volume: Volume) -> str:
    """The content hash the scan's case will get: keys its draft mask before the case exists."""
    return content_hash(_storable(volume.voxels), volume.affine)


def _storable(voxels: np.ndarray) -> np.ndarray:
    """Voxels in a type NIfTI stores without loss; nibabel refuses 64-bit integers and float16."""
    if voxels.size == 0:
        raise CaseLibraryError("The scan has no voxels.")
    kind, size = voxels.dtype.kind, voxels.dtype.itemsize
    if kind == "b":
        return voxels.astype(np.uint8)
    if kind == "f" and size == 2:
        return voxels.astype(np.float32)
    if kind in "iu" and size == 8:
        target = np.dtype(np.int32 if kind == "i" else np.uint32)
        limits = np.iinfo(target)
        if voxels.min() < limits.min or voxels.max() > limits.max:
            raise CaseLibraryError("The scan's voxel values do not fit 32-bit integers.")
        return voxels.astype(target)
    if kind not in "iuf":
        raise CaseLibraryError(f"Voxels of type {voxels.dtype} cannot be stored in a case.")
    return voxels


def _checked_mask(mask: np.ndarray | Volume | None, volume: Volume) -> np.ndarray | None:
    """The mask as small unsigned integers, refused unless it lies on the scan's voxel grid."""
    if mask is None:
        return None
    if isinstance(mask, Volume):
        if not np.allclose(mask.affine, volume.affine, atol=1e-4):
            raise CaseLibraryError(
                "The mask is on another grid than the scan (its position, orientation or spacing "
                "differs). Resample the mask onto the scan before saving the case."
            )
        mask = mask.voxels
    mask = np.asarray(mask)
    if mask.shape != volume.shape:
        raise CaseLibraryError(
            f"The mask is on another grid than the scan: its shape is {mask.shape}, the scan's "
            f"is {volume.shape}. Resample the mask onto the scan before saving the case."
        )
    return _label_voxels(mask)


def _label_voxels(mask: np.ndarray) -> np.ndarray:
    """A mask as the smallest unsigned integers that hold its labels (0 = background)."""
    mask = np.asarray(mask)
    kind = mask.dtype.kind
    whole = kind in "biu" or (kind == "f" and np.array_equal(mask, np.round(mask)))
    if not whole or mask.min() < 0:
        raise CaseLibraryError("A mask must hold whole label numbers (0 = background).")
    largest = int(mask.max())
    if largest > np.iinfo(np.uint32).max:
        raise CaseLibraryError("The mask's label numbers are too large to store.")
    return mask.astype(np.min_scalar_type(largest))
