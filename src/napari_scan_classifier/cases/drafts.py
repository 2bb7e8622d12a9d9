"""Autosaved masks of scans not yet saved as cases, so a crash loses little painting."""

from __future__ import annotations

import contextlib
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from napari_scan_classifier.cases.record import _SHA256, CaseRecord
from napari_scan_classifier.cases.store import CaseStore
from napari_scan_classifier.cases.voxels import _label_voxels
from napari_scan_classifier.errors import CaseLibraryError
from napari_scan_classifier.volume import Volume

DRAFTS = ".drafts"
DRAFT_SUFFIX = ".npz"


class DraftsMixin(CaseStore):
    """Drafts of the masks being painted, kept beside the cases and dropped once one is saved."""

    def save_draft(self, key: str, mask: np.ndarray) -> bool:
        """Keep the mask being painted on the scan ``key`` (see ``scan_key``), replacing its last
        draft atomically. An empty mask, or a scan already saved as a case, keeps no draft.

        Returns whether a draft is kept.
        """
        target = self._draft_path(key)
        voxels = _label_voxels(mask) if np.any(mask) else None
        with self._lock:
            if voxels is None or self._case_of(key) is not None:
                self.discard_draft(key)
                return False
            try:
                target.parent.mkdir(exist_ok=True)
            except OSError as error:
                raise self._write_error(error, "keep a draft of the mask") from error
            self._replace_file(
                target, lambda path: _write_draft(path, key, voxels), "keep a draft of the mask"
            )
        return True

    def load_draft(self, key: str, shape: tuple[int, ...]) -> np.ndarray | None:
        """The draft mask of the scan ``key`` (on its grid of ``shape``), or None when there is
        none; a leftover draft of a scan saved as a case since is removed."""
        path = self._draft_path(key)
        if not path.is_file():
            return None
        if self._case_of(key) is not None:
            self.discard_draft(key)
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                scan, mask = str(data["scan"]), data["mask"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            raise _damaged_draft() from error
        if scan != key or mask.shape != tuple(shape) or mask.dtype.kind != "u":
            raise _damaged_draft()
        return mask

    def discard_draft(self, key: str) -> bool:
        """Remove the draft of the scan ``key``; returns whether there was one."""
        path = self._draft_path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as error:
            raise self._write_error(error, "remove the draft of the mask") from error
        return True

    # -- internals -------------------------------------------------------------------------

    def _add(
        self,
        volume: Volume,
        label: str,
        *,
        mask: np.ndarray | Volume | None,
        prediction: Mapping[str, Any] | None,
        case_id: str | None = None,
        created: str | None = None,
    ) -> CaseRecord:
        """Save the case, then drop its scan's draft: the case now holds the mask."""
        record = super()._add(
            volume, label, mask=mask, prediction=prediction, case_id=case_id, created=created
        )
        with contextlib.suppress(CaseLibraryError):  # saved; load_draft ignores a leftover anyway
            self.discard_draft(record.content_hash)
        return record

    def _draft_path(self, key: str) -> Path:
        if not isinstance(key, str) or not _SHA256.fullmatch(key):
            raise CaseLibraryError(f"'{key}' is not a scan key (64 hexadecimal characters).")
        return self.root / DRAFTS / f"{key}{DRAFT_SUFFIX}"


def _write_draft(path: Path, key: str, mask: np.ndarray) -> None:
    """The mask and the scan's key, compressed; nothing else about the scan or the patient."""
    with open(path, "xb") as handle:
        np.savez_compressed(handle, mask=mask, scan=np.array(key))
        handle.flush()
        os.fsync(handle.fileno())


def _damaged_draft() -> CaseLibraryError:
    return CaseLibraryError(
        "The autosaved draft of this scan's lesion mask is damaged and cannot be restored; "
        "painting the mask again replaces it."
    )
