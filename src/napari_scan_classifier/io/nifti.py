"""NIfTI-1/-2 (.nii, .nii.gz), 3D and 4D, through nibabel.

NIfTI stores voxels as (i, j, k[, t]) with an (i, j, k) -> RAS affine; we transpose to (z, y, x)
or (t, z, y, x) and convert the affine to the package's world frame (see ``volume.py``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from napari_scan_classifier.errors import GeometryError, ResourceLimitError, UnreadableScanError
from napari_scan_classifier.io.checks import affine_problem, finite_positive
from napari_scan_classifier.limits import check_memory
from napari_scan_classifier.privacy import THE_INPUT, strip_paths
from napari_scan_classifier.volume import Volume, nifti_to_zyx_affine

# NIfTI intent/description fields are free text; we only keep what we wrote ourselves.
_MODALITY_PREFIX = "modality="
_PIXDIM = "voxel size (pixdim)"


def _candidate_affines(image: nib.Nifti1Image | nib.Nifti2Image) -> list[tuple[str, Any]]:
    """sform when set, then qform when set, then the header's pixdim grid (nibabel's and ITK's
    order of preference); each computed lazily, as a damaged quaternion can raise."""
    header = image.header
    candidates: list[tuple[str, Any]] = []
    if int(header["sform_code"]) > 0:
        candidates.append(("sform", lambda: header.get_sform()))
    if int(header["qform_code"]) > 0:
        candidates.append(("qform", lambda: header.get_qform()))
    candidates.append((_PIXDIM, header.get_base_affine))
    return candidates


def _trusted_affine(image: nib.Nifti1Image | nib.Nifti2Image, name: str) -> tuple[np.ndarray, list]:
    """The first finite, non-singular affine of the candidates, and what was passed over."""
    notes = []
    for source, compute in _candidate_affines(image):
        try:
            affine = np.asarray(compute(), float)
            problem = affine_problem(affine)
        except Exception as error:  # nibabel raises several types for damaged quaternions
            problem = f"it cannot be computed ({type(error).__name__})"
        if problem is None:
            if notes and source == _PIXDIM:
                notes.append(f"its {source} grid was used: orientation and position unknown")
            return affine, notes
        notes.append(f"its {source} is unusable ({problem}) and was ignored")
    raise GeometryError(f"{name}: no usable geometry: {'; '.join(notes)}")


def _declared_size(image: nib.Nifti1Image | nib.Nifti2Image, name: str) -> None:
    """Refuse empty or oversized images from the header, before any voxel is read."""
    shape = tuple(int(n) for n in image.header.get_data_shape())
    if len(shape) < 3:
        raise UnreadableScanError(f"{name}: a {len(shape)}D image, not a volume")
    if any(n <= 0 for n in shape):
        raise UnreadableScanError(f"{name}: its header declares {shape} voxels (an empty image)")
    proxy = image.dataobj
    scaled = getattr(proxy, "slope", 1.0) != 1.0 or getattr(proxy, "inter", 0.0) != 0.0
    itemsize = 8 if scaled else image.get_data_dtype().itemsize
    count = int(np.prod(shape, dtype=np.float64))
    check_memory(count * itemsize, f"{name} ({'x'.join(map(str, shape))} voxels)")


def _note_non_finite(data: np.ndarray, notes: list[str]) -> None:
    """Say how many float voxels are NaN or infinite. They are the file's values (a masked
    statistics map, or damage): kept, so a classifier refuses them rather than guess."""
    if data.dtype.kind == "f":
        count = data.size - int(np.count_nonzero(np.isfinite(data)))
        if count:
            notes.append(f"{count} voxel(s) hold NaN or infinity in the file")


def _modality_from_header(header: nib.Nifti1Header) -> str:
    description = bytes(header["descrip"]).split(b"\x00", 1)[0].decode("ascii", "replace")
    for token in description.split(";"):
        if token.startswith(_MODALITY_PREFIX):
            return token[len(_MODALITY_PREFIX) :].strip() or "OT"
    return "OT"


def _to_zyx(data: np.ndarray) -> np.ndarray:
    """(i, j, k[, t, ...]) -> (z, y, x) or (t, z, y, x); trailing dims beyond t fold into t."""
    if data.ndim == 3:
        return np.ascontiguousarray(data.transpose(2, 1, 0))
    volumes = data.reshape(*data.shape[:3], -1)
    return np.ascontiguousarray(volumes.transpose(3, 2, 1, 0))


def load_nifti(path: str | Path) -> Volume:
    """Read a .nii/.nii.gz file (NIfTI-1 or -2, 3D or 4D) as a Volume in world coordinates.

    The header is checked before any voxel is read: an empty or oversized image is refused, and
    a NaN or singular sform/qform is passed over (said in ``geometry_warnings``) for the next,
    and NaN voxels are reported there.
    """
    path = Path(path)
    try:
        image = nib.load(path)
    except FileNotFoundError:
        raise UnreadableScanError(f"{THE_INPUT}: no such file") from None
    except Exception as error:  # nibabel raises many types for corrupt headers
        raise UnreadableScanError(
            f"{THE_INPUT}: not a readable NIfTI file ({strip_paths(str(error), path)})"
        ) from None
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise UnreadableScanError(f"{THE_INPUT}: not a NIfTI image")
    _declared_size(image, THE_INPUT)
    affine, notes = _trusted_affine(image, THE_INPUT)
    try:
        data = np.asanyarray(image.dataobj)
    except MemoryError:
        raise ResourceLimitError(f"{THE_INPUT}: its voxels do not fit in memory") from None
    except Exception:  # truncated, corrupt gzip stream, impossible offsets
        raise UnreadableScanError(f"{THE_INPUT}: voxel data is truncated or corrupt") from None
    _note_non_finite(data, notes)
    thickness = finite_positive(float(image.header.get_zooms()[2]))
    metadata: dict[str, Any] = {
        "source_format": f"NIfTI-{2 if isinstance(image, nib.Nifti2Image) else 1}",
        "geometry_warnings": notes,
    }
    if thickness is not None:
        metadata["slice_thickness"] = thickness
    return Volume(
        voxels=_to_zyx(data),
        affine=nifti_to_zyx_affine(affine),
        modality=_modality_from_header(image.header),
        metadata=metadata,
    )


def save_nifti(volume: Volume, path: str | Path) -> Path:
    """Write a Volume (or a mask/map on its grid) as NIfTI-1, atomically, with its geometry.

    The file's sform and qform both carry the affine, so other viewers overlay it exactly.
    Only the modality is written to the header: no other metadata leaves the package.
    """
    path = Path(path)
    if not str(path).lower().endswith((".nii", ".nii.gz")):
        raise ValueError(f"{path.name}: a NIfTI file name must end in .nii or .nii.gz")
    problem = affine_problem(volume.affine)
    if problem:  # nibabel would fail with "Could not decompose affine", or write nonsense
        raise GeometryError(f"{path.name}: not written: {problem}")
    voxels = volume.voxels
    data = voxels.transpose(2, 1, 0) if voxels.ndim == 3 else voxels.transpose(3, 2, 1, 0)
    image = nib.Nifti1Image(_nifti_storable(np.asarray(data)), volume.nifti_affine())
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_sform(image.affine, code="scanner")
    if _is_orthogonal(image.affine):
        image.header.set_qform(image.affine, code="scanner")
    else:  # a qform cannot hold shear (gantry tilt): leave it unset rather than approximate it
        image.header.set_qform(None, code="unknown")
    image.header["descrip"] = f"{_MODALITY_PREFIX}{volume.modality}"[:79].encode("ascii", "replace")
    return _atomic_save(image, path)


def _nifti_storable(data: np.ndarray) -> np.ndarray:
    """NIfTI has no bool, float16 or (in nibabel) 64-bit integer voxels: narrow them losslessly."""
    if data.dtype == bool:
        return data.astype(np.uint8)
    if data.dtype == np.float16:
        return data.astype(np.float32)
    if data.dtype.kind in "iu" and data.dtype.itemsize == 8:
        low, high = (int(data.min()), int(data.max())) if data.size else (0, 0)
        for narrower in (np.uint8, np.int16, np.int32):
            info = np.iinfo(narrower)
            if info.min <= low and high <= info.max:
                return data.astype(narrower)
        return data.astype(np.float64)
    return data


def _is_orthogonal(affine: np.ndarray) -> bool:
    columns = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return bool(np.allclose(columns.T @ columns, np.eye(3), atol=1e-6))


def _atomic_save(image: nib.Nifti1Image, path: Path) -> Path:
    suffix = ".nii.gz" if str(path).lower().endswith(".gz") else ".nii"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".partial-", suffix=suffix, dir=path.parent)
    os.fchmod(handle, 0o644)  # mkstemp makes it private; outputs get the usual mode
    os.close(handle)
    try:
        nib.save(image, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
