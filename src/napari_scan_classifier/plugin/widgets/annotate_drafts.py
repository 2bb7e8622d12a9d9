"""Autosaved drafts of painted lesion masks: a crash of the viewer before *Save case* loses
little, and adding a mask to the same scan later brings the draft back."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Labels, Layer
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QTimer
from superqt.utils import FunctionWorker

from napari_scan_classifier.cases import CaseLibrary, scan_key
from napari_scan_classifier.errors import ScanClassifierError
from napari_scan_classifier.plugin.layers import (
    mask_on_acquired_grid,
    mask_to_layer_data,
    put_result_layer,
    scan_volume,
)
from napari_scan_classifier.plugin.widgets.annotate_layout import MASK_KIND
from napari_scan_classifier.plugin.widgets.plots import notify_error, run_in_thread
from napari_scan_classifier.volume import Volume

if TYPE_CHECKING:
    import napari

DRAFT_DELAY_MS = 2000  # autosave a mask this long after the last stroke, so painting stays fluent


class MaskDrafts:
    """Autosaves painted lesion masks as drafts in the case library, and restores them.

    A stroke (re)starts a timer; when it fires, the masks painted since their last draft are
    copied and written in a worker, one write at a time, so painting stays fluent and a crash
    loses at most the last moments. Drafts are keyed by the scan's content: the same scan
    reopened later finds its draft, whatever its layer is called or where it came from.
    """

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        library: Callable[[], Path],
        delay_ms: int = DRAFT_DELAY_MS,
    ) -> None:
        self._viewer = viewer
        self._library = library
        self._scans: dict[str, Layer] = {}  # by watched mask's unique_id: the scan it is for
        self._keys: dict[str, str] = {}  # by scan's unique_id: its scan key, hashed once
        self._pending: dict[str, Labels] = {}  # masks painted since their last draft
        self._writer: FunctionWorker | None = None
        self._workers: set[FunctionWorker] = set()
        self.timer = QTimer()
        self.timer.setSingleShot(True)
        self.timer.setInterval(delay_ms)
        self.timer.timeout.connect(self.flush)

    @property
    def busy(self) -> bool:
        """Whether a draft is being looked up or written."""
        return bool(self._workers)

    def watch(self, scan: Layer, mask: Labels, *, restore: bool) -> None:
        """Autosave what is painted in ``mask``; with ``restore``, first bring back its draft."""
        if mask.unique_id not in self._scans:
            mask.events.paint.connect(self._painted)
        self._scans[mask.unique_id] = scan
        if restore:
            self._restore(scan, mask)

    def flush(self) -> None:
        """Write drafts of the masks painted since their last one (the timer calls this)."""
        if self._writer is not None:
            return  # one write at a time: the pending masks follow when it ends
        masks = [mask for mask in self._pending.values() if mask in self._viewer.layers]
        self._pending.clear()
        jobs = [job for job in map(self._draft_job, masks) if job is not None]
        if jobs:
            job = partial(_keep_drafts, self._library(), jobs)
            self._writer = self._run(job, self._keys.update, "Autosaving the lesion mask")

    def _painted(self, event: Any) -> None:
        mask = event.source
        self._pending[mask.unique_id] = mask
        self.timer.start()  # restarts: the draft follows the last stroke

    def _draft_job(self, mask: Labels) -> _DraftJob | None:
        """What the worker needs to write ``mask``'s draft, with the mask copied (painting goes
        on while it writes)."""
        scan = self._scans[mask.unique_id]
        try:
            volume = scan_volume(scan)
            painted = np.array(mask_on_acquired_grid(mask, volume))
        except ScanClassifierError as error:
            notify_error(error, "Autosaving the lesion mask")
            return None
        return scan.unique_id, self._keys.get(scan.unique_id), volume, painted

    def _restore(self, scan: Layer, mask: Labels) -> None:
        try:
            volume = scan_volume(scan)
        except ScanClassifierError as error:
            notify_error(error, "Looking for a draft of the mask")
            return
        job = partial(_find_draft, self._library(), volume)
        on_found = partial(self._found, scan, mask, volume)
        self._run(job, on_found, "Restoring the draft of the lesion mask")

    def _found(
        self, scan: Layer, mask: Labels, volume: Volume, found: tuple[str, np.ndarray | None]
    ) -> None:
        """Paint the draft into the new mask, unless the user has begun painting it."""
        key, draft = found
        self._keys[scan.unique_id] = key
        if draft is None or mask not in self._viewer.layers:
            return
        if np.any(mask.data):
            show_warning(
                "This scan has an autosaved draft of its lesion mask, but painting has begun: "
                "the new painting is kept and replaces the draft."
            )
            return
        put_result_layer(
            self._viewer.layers, scan, MASK_KIND, mask_to_layer_data(volume, draft, mask.name)
        )
        show_info(
            "Restored the lesion mask painted on this scan before (an autosaved draft); "
            "Save case keeps it."
        )

    def _run(
        self, job: Callable[[], Any], on_result: Callable[[Any], None], name: str
    ) -> FunctionWorker:
        worker = run_in_thread(job)
        worker.returned.connect(on_result)
        worker.errored.connect(lambda error: notify_error(error, name))
        worker.finished.connect(partial(self._finished, worker))
        self._workers.add(worker)
        worker.start()
        return worker

    def _finished(self, worker: FunctionWorker) -> None:
        self._workers.discard(worker)
        if worker is self._writer:
            self._writer = None
            if self._pending:
                self.timer.start()


# (scan layer id, its scan key if known, the scan, the mask on the scan's acquired grid)
_DraftJob = tuple[str, str | None, Volume, np.ndarray]


def _keep_drafts(root: Path, jobs: list[_DraftJob]) -> dict[str, str]:
    """In the worker: write each mask's draft; returns the scan keys, hashed once per scan."""
    library = CaseLibrary(root)
    keys: dict[str, str] = {}
    for scan_id, key, volume, mask in jobs:
        keys[scan_id] = key or scan_key(volume)
        library.save_draft(keys[scan_id], mask)
    return keys


def _find_draft(root: Path, volume: Volume) -> tuple[str, np.ndarray | None]:
    """In the worker: the scan's key and its draft mask, if the library keeps one."""
    key = scan_key(volume)
    if not root.is_dir():  # no library yet, so no draft either
        return key, None
    return key, CaseLibrary(root).load_draft(key, volume.shape)
