"""The scan as the whole package sees it: voxels plus the geometry that places them in the patient.

World convention (written here once; every reader and writer converts at its edge)
--------------------------------------------------------------------------------
Arrays are indexed ``(z, y, x)`` = (slice, row, column). ``Volume.affine`` maps the homogeneous
index ``(z, y, x, 1)`` to *world* coordinates in millimetres, with world axes ordered

    world = (I, P, L) = (-S_lps, P_lps, L_lps) = (-z_LPS, y_LPS, x_LPS)

i.e. DICOM patient coordinates (LPS) with the axes reversed to match the array order and the
superior axis negated. That choice makes napari's default 2D camera (first displayed axis pointing
down, second pointing right) show every standard plane the way radiologists read it:

- axial (world axes 1, 2): anterior at the top, the patient's right on the viewer's left;
- coronal (world axes 0, 2): superior at the top, the patient's right on the viewer's left;
- sagittal (world axes 0, 1): superior at the top, anterior on the left.

DICOM is LPS and NIfTI is RAS; use :func:`lps_to_world` / :func:`ras_to_world` and their inverses,
or :meth:`Volume.nifti_affine`, rather than flipping signs by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import permutations
from typing import Any

import numpy as np

from napari_scan_classifier.errors import InvalidInputError

# Rows: world axes (I, P, L); columns: LPS axes (x=L, y=P, z=S).
_WORLD_FROM_LPS = np.array(
    [
        [0.0, 0.0, -1.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# NIfTI indexes voxels (i, j, k) = our (x, y, z): reverse the index axes.
_ZYX_FROM_IJK = np.array(
    [
        [0.0, 0.0, 1.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)

WORLD_AXES = ("inferior", "posterior", "left")
WORLD_AXIS_LABELS = ("I (mm)", "P (mm)", "L (mm)")

# Header fields a Volume may carry. Anything else (names, IDs, dates, UIDs, paths) never enters.
SAFE_METADATA_KEYS = frozenset(
    {
        "series_description",
        "series_number",
        "modality",
        "body_part",
        "image_type",
        "spacing",
        "window_center",
        "window_width",
        "rescale_slope",
        "rescale_intercept",
        "units",
        "source_format",
        "transfer_syntax",
        "manufacturer",
        "magnetic_field_strength",
        "slice_thickness",
        "geometry_warnings",
        "frame_axis",
        "frame",
        "frames",
        "series_key",
        "phantom_label",
        "phantom_lesions",
    }
)


def lps_to_world(lps_affine: np.ndarray) -> np.ndarray:
    """Re-express an affine whose output is LPS (x, y, z) mm in world (I, P, L) mm."""
    return _WORLD_FROM_LPS @ np.asarray(lps_affine, dtype=float)


def world_to_lps(world_affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`lps_to_world`."""
    return np.linalg.inv(_WORLD_FROM_LPS) @ np.asarray(world_affine, dtype=float)


def ras_to_world(ras_affine: np.ndarray) -> np.ndarray:
    """Re-express an affine whose output is RAS (x, y, z) mm in world (I, P, L) mm."""
    return lps_to_world(_LPS_FROM_RAS @ np.asarray(ras_affine, dtype=float))


def world_to_ras(world_affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`ras_to_world`."""
    return _LPS_FROM_RAS @ world_to_lps(world_affine)


def nifti_to_zyx_affine(nifti_affine: np.ndarray) -> np.ndarray:
    """World affine for a (z, y, x) array from a NIfTI (i, j, k) -> RAS affine."""
    return ras_to_world(np.asarray(nifti_affine, dtype=float) @ _ZYX_FROM_IJK)


def zyx_to_nifti_affine(world_affine: np.ndarray) -> np.ndarray:
    """NIfTI (i, j, k) -> RAS affine for the transposed (x, y, z) array; inverse of the above."""
    return world_to_ras(world_affine) @ np.linalg.inv(_ZYX_FROM_IJK)


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size (z, y, x) in mm: the length of each index axis in world space."""
    lengths = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)
    return (float(lengths[0]), float(lengths[1]), float(lengths[2]))


@dataclass
class Volume:
    """A 3D (or 4D: time/channel first) scan with its geometry and de-identified metadata.

    ``voxels`` is ``(z, y, x)`` or ``(t, z, y, x)``; ``affine`` is 4x4 from ``(z, y, x, 1)`` to
    world mm (see the module docstring). CT voxels are Hounsfield units.
    """

    voxels: np.ndarray
    affine: np.ndarray
    modality: str = "OT"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=float)
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")
        if self.voxels.ndim not in (3, 4):
            raise ValueError(f"voxels must be (z, y, x) or (t, z, y, x), got {self.voxels.shape}")
        unsafe = set(self.metadata) - SAFE_METADATA_KEYS
        if unsafe:
            raise ValueError(f"metadata keys not on the de-identified allow-list: {sorted(unsafe)}")
        self.metadata.setdefault("spacing", self.spacing)
        self.metadata.setdefault("modality", self.modality)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape (z, y, x)."""
        return tuple(int(n) for n in self.voxels.shape[-3:])  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        return spacing_of(self.affine)

    @property
    def description(self) -> str:
        return str(self.metadata.get("series_description") or "").strip()

    def display_name(self) -> str:
        """A layer name built from safe fields only (never patient fields)."""
        parts = [self.modality]
        if self.metadata.get("series_number") is not None:
            parts.append(f"#{self.metadata['series_number']}")
        if self.description:
            parts.append(self.description)
        if self.metadata.get("frame") is not None:
            parts.append(f"frame {self.metadata['frame']}")
        return " ".join(parts)

    def index_to_world(self, indices: np.ndarray) -> np.ndarray:
        """Map (N, 3) (z, y, x) indices to (N, 3) world mm."""
        pts = np.atleast_2d(np.asarray(indices, dtype=float))
        return pts @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_index(self, points: np.ndarray) -> np.ndarray:
        """Map (N, 3) world mm to fractional (z, y, x) indices."""
        inverse = np.linalg.inv(self.affine)
        pts = np.atleast_2d(np.asarray(points, dtype=float))
        return pts @ inverse[:3, :3].T + inverse[:3, 3]

    def nifti_affine(self) -> np.ndarray:
        """The (i, j, k) -> RAS affine of ``voxels`` transposed to (x, y, z), for NIfTI files."""
        return zyx_to_nifti_affine(self.affine)

    def world_aligned(self) -> Volume:
        """The same scan with data axis i the one running closest to world axis i (a view).

        Viewers that slice along data axes (napari) need this for sagittal and coronal
        acquisitions; the geometry is unchanged, only the axis order and affine columns permute.
        """
        order = self.world_order()
        lead = self.voxels.ndim - 3
        voxels = self.voxels.transpose(*range(lead), *(lead + axis for axis in order))
        return replace(self, voxels=voxels, affine=self.affine[:, [*order, 3]])

    def world_order(self) -> tuple[int, int, int]:
        """For each world axis (z, y, x), the data axis running closest to it: (0, 1, 2) for
        an axial series; a coronal or sagittal one permutes them."""
        cosines = np.abs(self.affine[:3, :3]) / np.linalg.norm(self.affine[:3, :3], axis=0)
        order = max(permutations(range(3)), key=lambda p: sum(cosines[i, p[i]] for i in range(3)))
        return tuple(int(axis) for axis in order)  # type: ignore[return-value]

    @property
    def frames(self) -> int:
        """How many volumes a 4D scan holds along its first axis (time points, echoes, b-values
        or channels); 1 for a 3D scan."""
        return 1 if self.voxels.ndim == 3 else int(self.voxels.shape[0])

    def frame(self, index: int) -> Volume:
        """The 3D volume at ``index`` (from 0, as napari's slider counts) of a 4D scan: a 3D
        classifier answers for one time point or echo, and the result says which."""
        if self.voxels.ndim == 3 or not 0 <= index < self.frames:
            raise InvalidInputError(
                f"there is no frame {index}: the scan has {self.frames} (0 to {self.frames - 1})"
            )
        metadata = {**self.metadata, "frame": int(index), "frames": self.frames}
        return replace(self, voxels=self.voxels[index], metadata=metadata)

    def with_voxels(self, voxels: np.ndarray, **metadata: Any) -> Volume:
        """A volume on the same grid with other voxels (a mask, a saliency or probability map)."""
        if voxels.shape[-3:] != self.shape:
            raise ValueError(f"voxels of shape {voxels.shape} are not on this {self.shape} grid")
        return replace(self, voxels=voxels, metadata={**self.metadata, **metadata})
