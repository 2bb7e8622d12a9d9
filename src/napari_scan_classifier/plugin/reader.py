"""npe2 reader: DICOM files and folders, NIfTI files, or a list of them; one image layer per series.

Problems with the input are the user's to fix, not bugs: they are reported in napari's notification
area (which files were skipped and why, what geometry had to be repaired, or why nothing could be
read), never as a traceback. They name inputs by position (``<input 2>``), never by file or
folder name (folders are often named after patients; see privacy.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from napari.types import FullLayerData
from napari.utils.notifications import show_error, show_warning

from napari_scan_classifier.errors import CancelledError, ScanClassifierError
from napari_scan_classifier.io import load_scans
from napari_scan_classifier.plugin.layers import volume_to_layer_data
from napari_scan_classifier.privacy import Redactor, numbered
from napari_scan_classifier.volume import Volume

PathOrPaths = str | Sequence[str]
ReaderFunction = Callable[[PathOrPaths], list[FullLayerData]]

# npe2's "read, but nothing to add" value: napari then adds no layer and raises no
# "no reader returned data" error of its own, because we have told the user already.
NOTHING_READ: list[FullLayerData] = [(None,)]  # type: ignore[list-item]
_MAX_LISTED = 10


def get_reader(path: PathOrPaths) -> ReaderFunction:
    """Claim everything napari offers: the manifest's patterns already picked folders, NIfTI and
    DICOM names, and a file that turns out unreadable deserves our explanation, not a refusal."""
    return read_scans


def read_scans(path: PathOrPaths) -> list[FullLayerData]:
    """Read every scan under ``path``; report what was skipped or repaired, or why nothing was."""
    layers, problems = load_layer_data(path)
    report_problems(len(layers), problems)
    return layers or NOTHING_READ


def load_layer_data(
    path: PathOrPaths,
    progress: Callable[[int, int, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> tuple[list[FullLayerData], list[str]]:
    """The layers of every scan under ``path`` and the problems to tell the user (any thread:
    nothing here touches Qt). CancelledError when ``cancel`` turns true between files."""
    paths = [path] if isinstance(path, str) else list(path)
    redact = Redactor(paths)
    volumes: list[Volume] = []
    problems: list[str] = []
    for number, p in enumerate(paths, start=1):
        try:
            result = load_scans(p, progress=progress, cancel=cancel)
        except CancelledError:
            raise
        except ScanClassifierError as error:
            problems.append(numbered(str(error), number))
            continue
        volumes.extend(result.volumes)
        for skipped in result.skipped:
            redact.found(skipped.local_path(), p)
            problems.append(f"a file of <input {number}> was skipped: {skipped}")
    problems = [redact(problem) for problem in [*problems, *_geometry_notes(volumes)]]
    return [volume_to_layer_data(v) for v in volumes], problems


def _geometry_notes(volumes: list[Volume]) -> list[str]:
    """What the loader repaired (gaps filled, uneven spacing resampled): the user should know."""
    return [
        f"{volume.display_name()}: {note}"
        for volume in volumes
        for note in volume.metadata.get("geometry_warnings", ())
    ]


def report_problems(loaded: int, problems: list[str]) -> None:
    """Tell the user what was skipped or repaired, or why nothing could be read."""
    if not loaded:
        show_error(_message("No scan could be read.", problems or ["no images found"]))
    elif problems:
        show_warning(_message(f"Loaded {loaded} series. Please note:", problems))


def _message(headline: str, problems: list[str]) -> str:
    listed = problems[:_MAX_LISTED]
    if len(problems) > _MAX_LISTED:
        listed.append(f"... and {len(problems) - _MAX_LISTED} more")
    return "\n".join([headline, *(f"- {p}" for p in listed)])
