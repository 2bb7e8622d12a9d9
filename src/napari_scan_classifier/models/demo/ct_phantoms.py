"""The CT demo's phantoms: which lesions each set holds, phantom pairs that share anatomy, the
renewed pools of the stages on lesion masks, and the model grid they are put on (see :mod:`.ct`
for the recipe)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from napari_scan_classifier import phantoms
from napari_scan_classifier.datasets import LabelledData
from napari_scan_classifier.models.demo import common
from napari_scan_classifier.models.demo.common import SEED_RANGE, Cases, span
from napari_scan_classifier.volume import Volume

# Phantom fields of view: the make_cases default and the sample scan's.
PHANTOM_SHAPES = ((64, 96, 96), (72, 128, 128))
SPACING = (2.5, 1.5, 1.5)
INTENSITY = {"kind": "ct_window", "center": 50.0, "width": 250.0}  # abdominal soft tissue
# Clear lesions (validation, a held-out test) take in the sample CT phantom's; training lesions
# take in those and make_cases' subtle ones (5-15 mm, 20-60 HU).
CLEAR_LESIONS = {"lesion_radius_mm": (6.0, 20.0), "lesion_contrast_hu": (35.0, 120.0)}
TRAIN_LESIONS = {"lesion_radius_mm": (5.0, 20.0), "lesion_contrast_hu": (20.0, 120.0)}
# The small-lesion stage alternates these with TRAIN_LESIONS, pair by pair.
SMALL_LESIONS = {"lesion_radius_mm": (5.0, 9.0), "lesion_contrast_hu": (20.0, 120.0)}
# The subtle-lesion stage alternates these (make_cases' lesions) with TRAIN_LESIONS.
SUBTLE_LESIONS = {"lesion_radius_mm": (5.0, 15.0), "lesion_contrast_hu": (20.0, 60.0)}
# Each stage on lesion masks draws from a pool of this many chunks: each epoch one chunk is new
# (mask_stage.SlidingChunks).
POOL_CHUNKS = 5
Lesions = dict[str, tuple[float, float]]
LesionKinds = Lesions | Sequence[Lesions]  # one kind, or kinds taken in turn by phantom pair


def paired_cases(
    n: int, seed: int, shapes: Sequence[tuple[int, int, int]], lesions: LesionKinds = CLEAR_LESIONS
) -> Cases:
    """``n`` cases as pairs with and without ``lesions``, each pair sharing its anatomy."""
    for phantom in paired_phantoms(n, seed, shapes, lesions):
        yield phantom.volume, phantom.class_name


def paired_phantoms(
    n: int, seed: int, shapes: Sequence[tuple[int, int, int]], lesions: LesionKinds
) -> Iterator[phantoms.Phantom]:
    """The phantoms of :func:`paired_cases`, with their lesion masks; with several kinds of
    lesions, pairs take them in turn, each kind in every field of view."""
    kinds = kinds_of(lesions)
    for index in range(n // 2):
        shape = shapes[index % len(shapes)]
        kind = kinds[(index // len(shapes)) % len(kinds)]
        for label in (0, 1):
            yield phantoms.make_ct_phantom(
                seed + index, shape, SPACING, None if label else 0, **kind
            )


def kinds_of(lesions: LesionKinds) -> list[Lesions]:
    return [lesions] if isinstance(lesions, dict) else list(lesions)


def clear_cases(n: int, seed: int, shapes: Sequence[tuple[int, int, int]]) -> Cases:
    """``n`` unpaired cases, every other one with clear lesions, each its own anatomy."""
    for index in range(n):
        shape = shapes[(index // 2) % len(shapes)]
        yield _phantom(seed + index, index % 2, shape, CLEAR_LESIONS)


def make_cases(n: int, seed: int, shapes: Sequence[tuple[int, int, int]]) -> Cases:
    """``n`` unpaired ``phantoms.make_cases`` cases, half with lesions, spread over ``shapes``."""
    for index, shape in enumerate(shapes):
        count = n // len(shapes) + (index < n % len(shapes))
        for case in phantoms.make_cases(count, seed + index, 0.5, "CT", shape, SPACING):
            yield case.volume, case.class_name


def _phantom(
    seed: int, label: int, shape: tuple[int, int, int], lesions: Lesions
) -> tuple[Volume, str]:
    case = phantoms.make_ct_phantom(seed, shape, SPACING, None if label else 0, **lesions)
    return case.volume, phantoms.CLASS_NAMES[case.label]


def grid(input_shape: Sequence[int]) -> common.Grid:
    """The demo's phantoms on a model grid of ``input_shape``: the whole scan stretched."""
    shape = tuple(int(n) for n in input_shape)
    return common.Grid(shape, None, INTENSITY, phantoms.CLASS_NAMES)  # type: ignore[arg-type]


def on_grid(cases: Cases, input_shape: Sequence[int], description: str) -> LabelledData:
    """Cases prepared on the model grid, with the demo's class order."""
    return common.on_grid(cases, grid(input_shape), description)


def pool_chunks(
    cases: int,
    seed: int,
    shapes: Sequence[tuple[int, int, int]],
    lesions: LesionKinds,
    epochs: int,
    first_chunk: int = 0,
) -> Callable[[int], Iterator[phantoms.Phantom]]:
    """Chunk ``c`` of a mask stage's pool: ``cases / POOL_CHUNKS`` paired phantoms from the
    seeds after chunk ``c - 1``'s, counted from ``first_chunk`` (after the chunks of the stages
    before), all below the validation seeds."""
    pairs = cases // POOL_CHUNKS // 2
    if (first_chunk + epochs + POOL_CHUNKS - 1) * pairs > SEED_RANGE:
        raise ValueError(
            f"{epochs} epochs of a pool of {cases} phantoms need more than the {SEED_RANGE} "
            "training seeds of the stages on lesion masks: use fewer epochs or cases"
        )
    return lambda number: paired_phantoms(
        2 * pairs, seed + (first_chunk + number) * pairs, shapes, lesions
    )


def pool_description(
    cases: int,
    shapes: Sequence[tuple[int, int, int]],
    lesions: LesionKinds,
    blur: bool,
    epochs: int,
) -> str:
    """:func:`paired_description` of the pool, with how it is renewed."""
    chunk = cases // POOL_CHUNKS // 2 * 2
    drawn = chunk * (epochs + POOL_CHUNKS - 1)
    return (
        f"{paired_description(cases, shapes, lesions, blur)}; {chunk} of them fresh each epoch "
        f"({drawn} in all)"
    )


def paired_description(
    cases: int, shapes: Sequence[tuple[int, int, int]], lesions: LesionKinds, blur: bool = False
) -> str:
    kinds = " or ".join(
        f"{span(kind['lesion_radius_mm'])} mm, {span(kind['lesion_contrast_hu'])} HU"
        for kind in kinds_of(lesions)
    )
    turns = " (in turn by pair)" if len(kinds_of(lesions)) > 1 else ""
    fields = " and ".join("x".join(map(str, shape)) for shape in shapes)
    copies = f", with {cases // 2} blurred copies" if blur else ""
    return f"{cases} phantoms ({fields}) in pairs, lesions {kinds}{turns}{copies}"
