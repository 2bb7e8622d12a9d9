"""Order, spacing and affine of a stack, from headers only."""

from __future__ import annotations

import math

import numpy as np

from napari_scan_classifier.errors import GeometryError
from napari_scan_classifier.io.checks import affine_problem
from napari_scan_classifier.io.dicom.records import _DEFAULT_IOP, _Frame, _Plan, _Stack

# Positions closer than this (mm) are the same slice; a stack is regular when every slice lies
# within max(_GRID_ABS_TOL, _GRID_REL_TOL * step) of a regular grid.
_DUPLICATE_TOL = 0.01
_GRID_ABS_TOL = 0.005
_GRID_REL_TOL = 0.02


def _cosines(frame: _Frame, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    iop = frame.orientation
    if iop is None:
        notes.append("no image orientation in the files: axial orientation assumed")
        iop = _DEFAULT_IOP
    row_cos, col_cos = np.array(iop[:3]), np.array(iop[3:])
    return row_cos / np.linalg.norm(row_cos), col_cos / np.linalg.norm(col_cos)


def _positions(frames: list[_Frame], normal: np.ndarray, notes: list[str]) -> np.ndarray:
    """Each frame's IPP; made up (in file/frame order) when the files carry none."""
    if all(f.position is not None for f in frames):
        return np.array([f.position for f in frames])
    frames.sort(key=lambda f: f.order)
    step = frames[0].thickness or 1.0
    origin = next((f.position for f in frames if f.position is not None), np.zeros(3))
    if not frames[0].file.time_frames and len(frames) > 1:
        notes.append(
            f"no slice positions in the files: slices kept in file order, {step:g} mm apart"
        )
    return np.array([origin + k * step * normal for k in range(len(frames))])


def _position_groups(frames: list[_Frame], depth: np.ndarray, notes: list[str]) -> list[list[int]]:
    """Frame indices sorted along the normal, one list per distinct position (time points or
    echoes at one position share a list, in acquisition order)."""
    groups: list[list[int]] = []
    depths = depth.tolist()  # plain floats: this loop runs once per frame
    for i in sorted(range(len(frames)), key=lambda i: (depths[i], frames[i].order)):
        if groups and depths[i] - depths[groups[-1][0]] <= _DUPLICATE_TOL:
            groups[-1].append(i)
        else:
            groups.append([i])
    for group in groups:
        group.sort(key=lambda i: frames[i].order)
    if len({len(g) for g in groups}) > 1:
        notes.append(_repeats_note(frames, groups, depth))
    return groups


def _repeats_note(frames: list[_Frame], groups: list[list[int]], depth: np.ndarray) -> str:
    """Which frames are left out where more claim one position than the others have: the last
    in acquisition order (instance number, then UID), named by instance and position."""
    times = min(len(g) for g in groups)
    dropped = [(i, depth[g[0]]) for g in groups for i in g[times:]]
    named = ", ".join(
        f"instance {frames[i].file.instance}"
        + (f" frame {frames[i].index + 1}" if frames[i].file.n_frames > 1 else "")
        + f" at {at:.2f} mm"
        for i, at in dropped[:5]
    )
    more = f" and {len(dropped) - 5} more" if len(dropped) > 5 else ""
    return (
        f"{len(dropped)} repeated slice(s) at one position left out ({named}{more} along the "
        "slice normal; the first in acquisition order is kept)"
    )


def _grid(depth: np.ndarray) -> tuple[np.ndarray, bool]:
    """Regularly spaced output depths from the first to the last slice, and whether every input
    slice lies on one of them (no resampling needed, at most missing slices to fill).

    The grid is never finer than the smallest gap, and never more than a few times denser than
    the input, so a stray slice cannot blow a stack up to thousands of interpolated slices.
    """
    if len(depth) == 1:
        return depth.copy(), True
    span = depth[-1] - depth[0]
    gaps = np.diff(depth)
    for gap in (gaps.min(), np.median(gaps)):
        count = max(1, round(span / gap))
        step = span / count
        offset = (depth - depth[0]) / step
        tol = max(_GRID_ABS_TOL, _GRID_REL_TOL * step)
        on_grid = np.all(np.abs(offset - np.rint(offset)) * step <= tol)
        if on_grid and count < 2 * len(depth) + 8:
            return depth[0] + step * np.arange(count + 1), True
    count = min(math.ceil(span / gaps.min() - 0.05), 4 * len(depth))
    return depth[0] + (span / count) * np.arange(count + 1), False


def _weights(depth: np.ndarray, targets: np.ndarray) -> list[list[tuple[int, float]]]:
    """Linear interpolation weights along the stack: (input index, weight) per output slice."""
    if len(depth) == 1:
        return [[(0, 1.0)]]
    step = (targets[-1] - targets[0]) / max(1, len(targets) - 1)
    tol = max(_GRID_ABS_TOL, _GRID_REL_TOL * step)
    lower = np.clip(np.searchsorted(depth, targets, side="right") - 1, 0, len(depth) - 2)
    weights = []
    for target, a in zip(targets, lower, strict=True):
        a = int(a)
        if abs(target - depth[a]) <= tol:
            weights.append([(a, 1.0)])
        elif abs(target - depth[a + 1]) <= tol:
            weights.append([(a + 1, 1.0)])
        else:
            w = float((target - depth[a]) / (depth[a + 1] - depth[a]))
            weights.append([(a, 1.0 - w), (a + 1, w)])
    return weights


def _gap_notes(depth: np.ndarray, targets: np.ndarray, weights: list, regular: bool) -> list[str]:
    if regular:
        notes = []
        z = 0
        while z < len(weights):
            if len(weights[z]) == 1:
                z += 1
                continue
            end = z
            while end + 1 < len(weights) and len(weights[end + 1]) == 2:
                end += 1
            a = weights[z][0][0]
            notes.append(
                f"{end - z + 1} slice(s) missing between {depth[a]:.2f} mm and "
                f"{depth[a + 1]:.2f} mm along the slice normal (after input slice {a} of "
                f"{len(depth)}); output slice(s) {z}-{end} filled by linear interpolation "
                "between the neighbouring slices"
            )
            z = end + 1
        return notes
    gaps = np.diff(depth)
    widest = int(np.argmax(gaps))
    step = (targets[-1] - targets[0]) / (len(targets) - 1)
    return [
        f"uneven slice spacing: gaps from {gaps.min():.3f} to {gaps.max():.3f} mm (widest between "
        f"input slices {widest} and {widest + 1}, at {depth[widest]:.2f}-{depth[widest + 1]:.2f} "
        f"mm along the slice normal); resampled onto a regular grid of {len(targets)} slices "
        f"{step:.3f} mm apart by linear interpolation between neighbouring slices"
    ]


def _line_notes(
    points: np.ndarray, depth: np.ndarray, normal: np.ndarray, step: np.ndarray
) -> list[str]:
    """Say when slices are sheared (gantry tilt) or do not lie on one straight line.

    Both only warn: the affine keeps the shear either way. Drifts under 0.05 mm over the whole
    stack are rounding in the headers, not tilt.
    """
    notes = []
    span = depth[-1] - depth[0]
    expected = points[0] + np.outer((depth - depth[0]) / span, points[-1] - points[0])
    off_line = float(np.max(np.linalg.norm(points - expected, axis=1)))
    if off_line > 0.1:
        notes.append(
            f"slice positions are not on one straight line (up to {off_line:.2f} mm off); "
            "slices placed on the line through the first and the last"
        )
    along = float(step @ normal)
    drift = points[-1] - points[0]
    shear = float(np.linalg.norm(drift - (drift @ normal) * normal))
    if shear > 0.05:
        angle = math.degrees(math.atan2(np.linalg.norm(step - along * normal), abs(along)))
        notes.append(
            f"slices are sheared by {angle:.2f} degrees (gantry tilt): the affine is "
            "sheared so every pixel keeps its scanner position"
        )
    return notes


def _spatial_layout(frames: list[_Frame], normal: np.ndarray, notes: list[str]) -> tuple:
    """Layers, interpolation weights, slice step, origin and mode of a stack of slices."""
    points = _positions(frames, normal, notes)
    all_depths = points @ normal
    groups = _position_groups(frames, all_depths, notes)
    times = min(len(g) for g in groups)
    layers = [[frames[g[t]] for g in groups] for t in range(times)]
    lead = [g[0] for g in groups]
    depth, points = all_depths[lead], points[lead]
    targets, regular = _grid(depth)
    weights = _weights(depth, targets)
    if len(depth) == 1:
        first = frames[0]
        return layers, weights, normal * (first.thickness or 1.0), points[0], "exact"
    step = (points[-1] - points[0]) / (len(targets) - 1)
    notes += _gap_notes(depth, targets, weights, regular)
    notes += _line_notes(points, depth, normal, step)
    exact = len(targets) == len(depth) and all(len(w) == 1 for w in weights)
    mode = "exact" if exact else ("fill" if regular else "resample")
    return layers, weights, step, points[0], mode


def _stack_name(stack: _Stack) -> str:
    """How messages name a stack: its series number and key, never a file or patient field."""
    number = stack.frames[0].file.fields.get("series_number")
    return f"series {number if number is not None else '?'} ({stack.key})"


def _plan(stack: _Stack) -> _Plan:
    """Order, spacing and affine of a stack, from headers only."""
    notes: list[str] = []
    frames = list(stack.frames)
    first = frames[0]
    row_cos, col_cos = _cosines(first, notes)
    normal = np.cross(row_cos, col_cos)
    spacing = first.pixel_spacing
    if spacing is None:
        notes.append("no pixel spacing in the files: 1 mm pixels assumed")
        spacing = (1.0, 1.0)
    if any(part.startswith("copy") for part in first.file.variant):
        notes.append(
            "these files repeat the instance UIDs of another volume of this series with other "
            "content (another encoding or other pixels): loaded as a volume of their own"
        )
    if first.file.flip_rows:
        notes.append(
            "GE reverse phase-encoding volumes: flipped along the phase-encoding (row) axis "
            "as dcm2niix does, and kept apart from the forward ones"
        )
    if first.file.time_frames:  # cine: frames are time points of one plane, kept on axis 0
        frames.sort(key=lambda f: f.order)
        origin = first.position if first.position is not None else np.zeros(3)
        layers, step, mode = [frames], normal, "exact"
        weights = [[(k, 1.0)] for k in range(len(frames))]
    else:
        layers, weights, step, origin, mode = _spatial_layout(frames, normal, notes)
    affine = np.eye(4)
    affine[:3, 0] = step
    affine[:3, 1] = col_cos * spacing[0]
    affine[:3, 2] = row_cos * spacing[1]
    affine[:3, 3] = origin
    problem = affine_problem(affine)
    if problem:
        raise GeometryError(
            f"{_stack_name(stack)}: its slices cannot be placed in space: {problem}"
        )
    frame_axis = "time" if first.file.time_frames or len(layers) > 1 else None
    return _Plan(layers, weights, mode, affine, notes, frame_axis)
