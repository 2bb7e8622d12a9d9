"""The case library users see: reading, labelling, trash, drafts and zip exchange in one class."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_scan_classifier.cases.deidentify import clean_label
from napari_scan_classifier.cases.drafts import DraftsMixin
from napari_scan_classifier.cases.exchange import ExchangeMixin
from napari_scan_classifier.cases.record import (
    CASE_FILE,
    MASK_FILE,
    TRASH,
    VOLUME_FILE,
    CaseRecord,
    _checked_id,
    _now,
    _read_record,
    _scan,
)
from napari_scan_classifier.cases.store import _fsync_dir, _write_json
from napari_scan_classifier.cases.voxels import content_hash
from napari_scan_classifier.errors import CaseLibraryError, ScanClassifierError
from napari_scan_classifier.io.nifti import load_nifti
from napari_scan_classifier.volume import Volume


class CaseLibrary(DraftsMixin, ExchangeMixin):
    """Annotated cases in a folder: add, list, load, relabel, delete/restore, zip export/import,
    and drafts of masks being painted.

    Safe to use from several threads of one viewer; two processes may share a folder (writes
    never collide) but could both add the same scan if they do so at the same instant.
    """

    # -- reading ---------------------------------------------------------------------------

    def load(self, case_id: str) -> tuple[Volume, np.ndarray | None]:
        """The case's volume (geometry and kept metadata) and its mask, checked against the hash."""
        folder = self._folder(case_id)
        record = _read_record(folder)
        try:
            image = load_nifti(folder / VOLUME_FILE)
            mask = load_nifti(folder / MASK_FILE).voxels if record.has_mask else None
        except ScanClassifierError as error:
            raise CaseLibraryError(f"Case {case_id} is damaged: {error}") from error
        if content_hash(image.voxels, image.affine) != record.content_hash:
            raise CaseLibraryError(f"Case {case_id} is damaged: its voxels fail their checksum.")
        if mask is not None and mask.shape != image.shape:
            raise CaseLibraryError(f"Case {case_id} is damaged: its mask is on another grid.")
        volume = Volume(
            image.voxels, image.affine, modality=record.modality, metadata=dict(record.metadata)
        )
        return volume, mask

    def counts(self) -> dict[str, int]:
        """Cases per class label, sorted by label."""
        return dict(sorted(Counter(record.label for record in self.list()).items()))

    def iter_cases(
        self, labels: Iterable[str] | None = None
    ) -> Iterator[tuple[CaseRecord, Volume, np.ndarray | None]]:
        """Yield (record, volume, mask) one case at a time, optionally only some labels."""
        wanted = None if labels is None else set(labels)
        for record in self.list():
            if wanted is None or record.label in wanted:
                volume, mask = self.load(record.case_id)
                yield record, volume, mask

    def volumes_and_labels(
        self, labels: Iterable[str] | None = None
    ) -> tuple[list[Volume], list[str]]:
        """All volumes and their labels in memory, for training on a small library."""
        volumes, names = [], []
        for record, volume, _mask in self.iter_cases(labels):
            volumes.append(volume)
            names.append(record.label)
        return volumes, names

    # -- writing ---------------------------------------------------------------------------

    def add(
        self,
        volume: Volume,
        label: str,
        *,
        mask: np.ndarray | Volume | None = None,
        prediction: Mapping[str, Any] | None = None,
    ) -> CaseRecord:
        """Save a new case; refuses an empty label, a mask on another grid or a duplicate scan."""
        return self._add(volume, label, mask=mask, prediction=prediction)

    def relabel(self, case_id: str, label: str) -> CaseRecord:
        """Change a case's label by atomically replacing its ``case.json``."""
        label = clean_label(label)
        with self._lock:
            folder = self._folder(case_id)
            record = replace(_read_record(folder), label=label, modified=_now())
            data = record.to_json()
            self._replace_file(
                folder / CASE_FILE, lambda path: _write_json(path, data), "update the case"
            )
        return record

    def delete(self, case_id: str) -> Path:
        """Move a case (damaged ones too) to ``.trash``, from where ``restore`` brings it back."""
        with self._lock:
            folder = self._folder(case_id)
            trash = self.root / TRASH
            try:
                trash.mkdir(exist_ok=True)
                os.replace(folder, trash / case_id)
                _fsync_dir(self.root)
            except OSError as error:
                raise self._write_error(error, "delete the case") from error
        return trash / case_id

    def restore(self, case_id: str) -> CaseRecord:
        """Bring a deleted case back, unless the same scan has been added again since."""
        source = self.root / TRASH / _checked_id(case_id)
        if not source.is_dir():
            raise CaseLibraryError(f"Case {case_id} is not in the trash.")
        with self._lock:
            record = _read_record(source)
            self._refuse_duplicate(record.content_hash)
            try:
                os.replace(source, self.root / case_id)
                _fsync_dir(self.root)
            except OSError as error:
                raise self._write_error(error, "restore the case") from error
        return record

    def list_trash(self) -> list[CaseRecord]:
        """Deleted cases that ``restore`` can bring back."""
        return _scan(self.root / TRASH)[0]

    def empty_trash(self) -> int:
        """Delete the trashed cases for good; returns how many were removed."""
        trash = self.root / TRASH
        folders = [p for p in trash.iterdir() if p.is_dir()] if trash.is_dir() else []
        try:
            for folder in folders:
                shutil.rmtree(folder)
        except OSError as error:
            raise self._write_error(error, "empty the trash") from error
        return len(folders)
