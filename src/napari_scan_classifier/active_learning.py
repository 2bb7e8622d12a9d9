"""Active learning: which scans should the expert label first?

A scan the model is already sure about teaches it little when labelled; one it is unsure about
teaches it most. :func:`rank_by_uncertainty` classifies scans (in memory or on disk) with Monte
Carlo dropout and orders them by one of three measures, higher meaning "label this first":

- ``"entropy"``: the predictive entropy ``H[mean p]`` (nats), all uncertainty together;
- ``"mutual_information"``: ``H[mean p] - mean H[p]`` (BALD), the part due to the model's lack of
  knowledge (its dropout samples disagree), not to a scan that is ambiguous in itself;
- ``"margin"``: ``1 - (p1 - p2)`` with the two largest mean probabilities: closeness to the
  decision boundary.

Scans the applicability check finds out of distribution (:mod:`.applicability`) are ranked
apart, after every in-distribution scan: the model's uncertainty about a scan unlike its training
data says little, and labelling it may teach the model something it should not be used for.

:func:`rank_by_chosen_model` ranks each scan with the model made for its modality and body region
(:mod:`.choice`, as ``--model auto`` chooses): each model's scans are ranked among themselves,
since one model's uncertainty says nothing about what labelling teaches another (and entropy's
scale grows with the number of classes). Scans no installed model covers are listed apart with
the reason, never ranked by the nearest model.

Scans on disk are read one input at a time and classified in small batches, so a large folder is
never held in memory at once; a ranked scan is read again with :func:`load_ranked`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from napari_scan_classifier.choice import Chooser
from napari_scan_classifier.errors import (
    InvalidInputError,
    ScanClassifierError,
    UnreadableScanError,
)
from napari_scan_classifier.inference import Cancel, Prediction, Progress, Reporter
from napari_scan_classifier.io import files_under, is_nifti, load_scans
from napari_scan_classifier.io.dicom import load_dicom
from napari_scan_classifier.models import Bundle
from napari_scan_classifier.privacy import renamed
from napari_scan_classifier.results import predict
from napari_scan_classifier.volume import Volume

MEASURES = ("entropy", "mutual_information", "margin")
MEASURE_TITLES = {
    "entropy": "Predictive entropy",
    "mutual_information": "Mutual information (BALD)",
    "margin": "Margin (1 - p1 + p2)",
}
DEFAULT_PASSES = 10
BATCH_SIZE = 8  # scans per forward batch: bounded memory, shared model overhead

ScanSource = Volume | str | os.PathLike[str]
# The model a scan is ranked with, why it was chosen (a given model: ""), how the scan was told
# ("" when not chosen); no model: None, the reason and how.
Pick = Callable[[Volume], tuple[Bundle | None, str, str]]


@dataclass(frozen=True)
class Ranked:
    """One scan's place in its model's ranking (``rank`` 1: label first) and the prediction
    behind it; ``model`` names the model (``"demo_mr_brain v2"``) and ``choice`` says why the
    scan chose it (empty when the model was given).

    ``item`` is the position in the input of the volume or path the scan came from; ``path`` and
    ``series_key`` say which file or DICOM series it is, for :func:`load_ranked` (both None for
    a volume handed in). ``name`` is what to show: the scan's place (``input 2``, ``input 2,
    NIfTI file 3``), its series key and safe header fields, never a file or folder name (folders
    are often named after patients); ``path`` is for reading the scan again and never shown.
    """

    rank: int
    score: float
    measure: str
    item: int
    name: str
    predicted_class: str
    probabilities: dict[str, float]
    uncertainty: dict[str, Any]
    path: Path | None = field(default=None, repr=False)
    series_key: str | None = None
    in_distribution: bool = True
    ood_reasons: tuple[str, ...] = ()
    model: str = ""
    choice: str = ""


@dataclass(frozen=True)
class Unranked:
    """A scan no installed model covers, named and found again as :class:`Ranked` is; ``reason``
    says why in words (``"no installed model covers CT head: install or train one ..."``) and
    ``how`` how the scan's modality and region were told."""

    item: int
    name: str
    reason: str
    how: str
    path: Path | None = field(default=None, repr=False)
    series_key: str | None = None


@dataclass(frozen=True)
class Ranking:
    """Scans ranked by the model each chose (each model's scans together, in order of the
    model's name, most informative first) and the scans no model covers, in input order."""

    ranked: list[Ranked]
    uncovered: list[Unranked]


@dataclass(frozen=True)
class _Scan:
    """A scan waiting for its prediction, and where it came from."""

    item: int
    name: str
    volume: Volume
    path: Path | None = None
    series_key: str | None = None


def uncertainty_score(uncertainty: Mapping[str, Any], measure: str) -> float:
    """The ``measure`` of a prediction's ``uncertainty`` dict (see :mod:`.inference`)."""
    if measure == "entropy":
        return float(uncertainty["predictive_entropy"])
    if measure == "mutual_information":
        return float(uncertainty["mutual_information"])
    if measure == "margin":
        top = sorted(uncertainty["mean"].values(), reverse=True)
        return 1.0 - (top[0] - (top[1] if len(top) > 1 else 0.0))
    raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")


def rank_by_uncertainty(
    scans: Sequence[ScanSource],
    bundle: Bundle,
    *,
    measure: str = "entropy",
    passes: int = DEFAULT_PASSES,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    on_skip: Callable[[str], None] | None = None,
) -> list[Ranked]:
    """Rank ``scans`` (Volumes, scan files, DICOM folders, folders of NIfTI files) most
    informative first, out-of-distribution scans after all others; ties keep the input order.

    Inputs that cannot be read or classified are left out and reported to ``on_skip`` (one line
    each, naming the input by its place as ``Ranked.name`` does); ``progress`` gets (inputs
    done, inputs, message); CancelledError when ``cancel`` fires.
    """
    options = {"measure": measure, "passes": passes, "progress": progress, "cancel": cancel}
    return _rank(scans, lambda volume: (bundle, "", ""), on_skip=on_skip, **options).ranked


def rank_by_chosen_model(
    scans: Sequence[ScanSource],
    chooser: Chooser | None = None,
    *,
    measure: str = "entropy",
    passes: int = DEFAULT_PASSES,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    on_skip: Callable[[str], None] | None = None,
) -> Ranking:
    """Rank each scan with the model ``chooser`` (default: among the shipped and installed
    models) chooses for its modality and body region; each model's scans are ranked among
    themselves as :func:`rank_by_uncertainty` ranks them, and a scan no model covers is listed
    apart with the reason. Each chosen model is loaded once; inputs are as for
    :func:`rank_by_uncertainty`, and a scan whose model cannot be loaded is skipped with why."""
    chosen = Chooser() if chooser is None else chooser

    def pick(volume: Volume) -> tuple[Bundle | None, str, str]:
        choice = chosen.choose(volume)
        model = None if choice.model is None else chosen.bundle(choice.model)
        return model, choice.reason, choice.identity.how()

    options = {"measure": measure, "passes": passes, "progress": progress, "cancel": cancel}
    return _rank(scans, pick, on_skip=on_skip, **options)


def _rank(
    scans: Sequence[ScanSource],
    pick: Pick,
    *,
    measure: str,
    passes: int,
    progress: Progress | None,
    cancel: Cancel | None,
    on_skip: Callable[[str], None] | None,
) -> Ranking:
    """Predict each scan with the model ``pick`` gives it, in batches per model, and rank each
    model's scans (see :func:`rank_by_chosen_model`)."""
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
    if passes < 1:
        raise ValueError(f"passes must be at least 1, got {passes}")
    skip = on_skip or (lambda message: None)
    inputs = _expanded(scans)
    report = Reporter(len(inputs), progress, cancel, job="ranking")
    found: dict[int, tuple[Bundle, list[tuple[_Scan, str, Prediction]]]] = {}
    uncovered: list[Unranked] = []
    pending = _scans(inputs, report, skip)
    while chunk := list(islice(pending, BATCH_SIZE)):
        for bundle, members in _by_model(chunk, pick, skip, uncovered).values():
            volumes = [scan.volume for scan, _ in members]
            outcomes = _predict_each(volumes, bundle, passes, cancel)
            for (scan, why), outcome in zip(members, outcomes, strict=True):
                if isinstance(outcome, str):
                    skip(f"{scan.name}: {outcome}")
                else:
                    found.setdefault(id(bundle), (bundle, []))[1].append((scan, why, outcome))
    report.finish()
    groups = sorted(found.values(), key=lambda group: _model_name(group[0]))
    ranked = [r for bundle, group in groups for r in _ranked(group, bundle, measure)]
    return Ranking(ranked, uncovered)


def _by_model(
    chunk: list[_Scan], pick: Pick, skip: Callable[[str], None], uncovered: list[Unranked]
) -> dict[int, tuple[Bundle, list[tuple[_Scan, str]]]]:
    """The chunk's scans by the model each is ranked with; the others go to ``uncovered``, or
    to ``skip`` when the choice itself fails (a scan that cannot be identified, a model that
    cannot be loaded)."""
    groups: dict[int, tuple[Bundle, list[tuple[_Scan, str]]]] = {}
    for scan in chunk:
        try:
            bundle, why, how = pick(scan.volume)
        except ScanClassifierError as error:
            skip(f"{scan.name}: {error}")
            continue
        if bundle is None:
            uncovered.append(Unranked(scan.item, scan.name, why, how, scan.path, scan.series_key))
        else:
            groups.setdefault(id(bundle), (bundle, []))[1].append((scan, why))
    return groups


def _ranked(
    found: list[tuple[_Scan, str, Prediction]], bundle: Bundle, measure: str
) -> list[Ranked]:
    """One model's scans, most informative first, out-of-distribution ones after the others."""
    scored = [(uncertainty_score(p.uncertainty, measure), scan, why, p) for scan, why, p in found]
    # stable: ties keep the input order
    scored.sort(key=lambda entry: (not entry[3].in_distribution, -entry[0]))
    return [
        Ranked(
            rank=rank,
            score=score,
            measure=measure,
            item=scan.item,
            name=scan.name,
            predicted_class=prediction.predicted_class,
            probabilities=dict(prediction.probabilities),
            uncertainty=dict(prediction.uncertainty),
            path=scan.path,
            series_key=scan.series_key,
            in_distribution=prediction.in_distribution,
            ood_reasons=tuple(prediction.ood.reasons) if prediction.ood else (),
            model=_model_name(bundle),
            choice=why,
        )
        for rank, (score, scan, why, prediction) in enumerate(scored, start=1)
    ]


def _model_name(bundle: Bundle) -> str:
    return f"{bundle.metadata.name} v{bundle.metadata.version}"


def load_ranked(ranked: Ranked | Unranked) -> Volume:
    """Read the scan a ranking entry names from disk again (only that DICOM series)."""
    if ranked.path is None:
        raise ValueError("this scan was ranked from memory; it has no file to read")
    if ranked.series_key is None or is_nifti(ranked.path):
        volumes = load_scans(ranked.path).volumes
    else:
        volumes = load_dicom(ranked.path, series=[ranked.series_key]).volumes
    if not volumes:
        raise UnreadableScanError(f"{ranked.name}: the ranked series is no longer there")
    return volumes[0]


def _expanded(scans: Sequence[ScanSource]) -> list[tuple[int, Volume | Path, str]]:
    """(input position, volume or path, its place in words); a folder is replaced by its NIfTI
    files (``input 2, NIfTI file 3``: the third in sorted order), plus itself when it holds
    other (DICOM) files, so one folder can mix both."""
    inputs: list[tuple[int, Volume | Path, str]] = []
    for item, scan in enumerate(scans):
        place = f"input {item + 1}"
        if isinstance(scan, Volume):
            inputs.append((item, scan, place))
            continue
        path = Path(scan)
        if not path.is_dir():
            inputs.append((item, path, place))
            continue
        files = files_under(path)
        nifti = [p for p in files if is_nifti(p)]
        inputs.extend((item, p, f"{place}, NIfTI file {n}") for n, p in enumerate(nifti, 1))
        if len(nifti) < len(files):
            inputs.append((item, path, place))
    return inputs


def _scans(
    inputs: list[tuple[int, Volume | Path, str]], report: Reporter, skip: Callable[[str], None]
) -> Iterator[_Scan]:
    """Each input's scans, read only when needed; unreadable inputs go to ``skip``."""
    for item, source, place in inputs:
        if isinstance(source, Volume):
            report(f"classifying {source.display_name()}")
            yield _Scan(item, source.display_name(), source)
            continue
        report(f"reading {place}")
        try:  # a folder's NIfTI files are read alone
            loaded = load_dicom(source) if source.is_dir() else load_scans(source)
        except UnreadableScanError as error:
            skip(renamed(str(error), place))
            continue
        for skipped in loaded.skipped:
            skip(f"{place}: {skipped}")
        for volume in loaded.volumes:
            key = volume.metadata.get("series_key")
            series = "" if key is None else f", series {key}"
            name = f"{place}{series}: {volume.display_name()}"
            yield _Scan(item, name, volume, source, None if key is None else str(key))


def _predict_each(
    volumes: list[Volume], bundle: Bundle, passes: int, cancel: Cancel | None
) -> list[Prediction | str]:
    """One batch; when a scan in it is unusable, each on its own, so the others still get a
    prediction (and the unusable ones the reason)."""
    try:
        return list(predict(volumes, bundle, passes, cancel=cancel))
    except InvalidInputError as error:
        if len(volumes) == 1:
            return [str(error)]
    return [p for volume in volumes for p in _predict_each([volume], bundle, passes, cancel)]
