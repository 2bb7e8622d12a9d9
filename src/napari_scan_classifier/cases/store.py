"""The library folder and its writes, so a crash leaves every case whole or invisible."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs

from napari_scan_classifier.cases.deidentify import (
    _clean_modality,
    _clean_prediction,
    case_metadata,
    clean_label,
)
from napari_scan_classifier.cases.record import (
    CASE_FILE,
    INCOMING,
    MASK_FILE,
    VOLUME_FILE,
    CaseRecord,
    CorruptCase,
    _case_files,
    _checked_id,
    _now,
    _read_record,
    _scan,
)
from napari_scan_classifier.cases.voxels import _checked_mask, _storable, content_hash
from napari_scan_classifier.errors import CaseLibraryError
from napari_scan_classifier.io.nifti import save_nifti
from napari_scan_classifier.outputs import clean_stale
from napari_scan_classifier.volume import Volume

log = logging.getLogger(__name__)


def default_root() -> Path:
    """The per-user case folder used when the user has not chosen one."""
    return Path(platformdirs.user_data_dir("napari-scan-classifier")) / "cases"


class CaseStore:
    """A case folder behind a lock: reads its records and writes checked cases atomically."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CaseLibraryError(
                f"Cannot open the case library at {self.root}: {error.strerror or error}"
            ) from error
        if not self.root.is_dir():
            raise CaseLibraryError(f"Cannot open the case library at {self.root}: not a folder")
        self._lock = threading.RLock()
        self._clean_incoming()

    # -- reading ---------------------------------------------------------------------------

    def list(self) -> list[CaseRecord]:
        """All readable cases, oldest first. Damaged case folders are logged and skipped."""
        records, corrupt = _scan(self.root)
        for case in corrupt:
            log.warning("Skipping damaged case %s: %s", case.case_id, case.reason)
        return records

    def corrupt_cases(self) -> list[CorruptCase]:
        """Case folders that ``list`` skips, with the reason, so the user can delete them."""
        return _scan(self.root)[1]

    def get(self, case_id: str) -> CaseRecord:
        return _read_record(self._folder(case_id))

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
        label = clean_label(label)
        voxels = _storable(volume.voxels)
        mask_voxels = _checked_mask(mask, volume)
        modality = _clean_modality(volume.modality)
        now = _now()
        record = CaseRecord(
            case_id=case_id or uuid.uuid4().hex,
            label=label,
            modality=modality,
            shape=tuple(int(n) for n in voxels.shape),
            spacing=volume.spacing,
            has_mask=mask_voxels is not None,
            prediction=_clean_prediction(prediction),
            created=created or now,
            modified=now,
            content_hash=content_hash(voxels, volume.affine),
            metadata=case_metadata(volume.metadata),
        )
        with self._lock:
            self._refuse_duplicate(record.content_hash)
            self._write_case(record, Volume(voxels, volume.affine, modality=modality), mask_voxels)
        return record

    def _write_case(self, record: CaseRecord, volume: Volume, mask: np.ndarray | None) -> None:
        """Build the case in .incoming, fsync it, then rename it into place (the commit point)."""
        incoming = self.root / INCOMING / record.case_id
        try:
            incoming.mkdir(parents=True)
            save_nifti(volume, incoming / VOLUME_FILE)
            if mask is not None:
                save_nifti(
                    Volume(mask, volume.affine, modality=volume.modality), incoming / MASK_FILE
                )
            _write_json(incoming / CASE_FILE, record.to_json())
            for name in _case_files(record):
                _fsync_file(incoming / name)
            _fsync_dir(incoming)
            os.replace(incoming, self.root / record.case_id)
        except BaseException as error:
            shutil.rmtree(incoming, ignore_errors=True)
            if isinstance(error, OSError):
                raise self._write_error(error, "save the case") from error
            raise
        _fsync_dir(self.root)

    def _replace_file(self, target: Path, write: Callable[[Path], None], action: str) -> None:
        """Write ``target`` in .incoming, then rename it over the old one: old or new, not torn."""
        temporary = self.root / INCOMING / f"{uuid.uuid4().hex}{target.suffix}"
        try:
            temporary.parent.mkdir(exist_ok=True)
            write(temporary)
            os.replace(temporary, target)
        except BaseException as error:
            temporary.unlink(missing_ok=True)
            if isinstance(error, OSError):
                raise self._write_error(error, action) from error
            raise
        _fsync_dir(target.parent)

    def _refuse_duplicate(self, digest: str) -> None:
        record = self._case_of(digest)
        if record is not None:
            raise CaseLibraryError(
                f"This scan is already in the library as case {record.case_id} "
                f"(label '{record.label}')."
            )

    def _case_of(self, digest: str) -> CaseRecord | None:
        """The case of the scan with this content hash, if it is in the library."""
        return next((r for r in _scan(self.root)[0] if r.content_hash == digest), None)

    def _folder(self, case_id: str) -> Path:
        folder = self.root / _checked_id(case_id)
        if not folder.is_dir():
            raise CaseLibraryError(f"No case {case_id} in the library.")
        return folder

    def _write_error(self, error: OSError, action: str) -> CaseLibraryError:
        """Say why a write failed in terms the user can fix: permissions or disk space."""
        if isinstance(error, PermissionError) or error.errno == errno.EROFS:
            reason = "the library folder is read-only (check its permissions)"
        elif error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            reason = "the disk is full"
        else:
            reason = f"{error.strerror or error} (is the folder read-only or the disk full?)"
        return CaseLibraryError(
            f"Could not {action} in the case library at {self.root}: {reason}. Nothing was changed."
        )

    def _clean_incoming(self) -> None:
        """Remove writes abandoned by a crash; recent ones may belong to another live viewer."""
        clean_stale(self.root / INCOMING, matching=lambda _name: True)


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    with open(path, "x", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True, allow_nan=False)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable. Best effort: Windows and some filesystems cannot fsync folders."""
    with contextlib.suppress(OSError):
        handle = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)
