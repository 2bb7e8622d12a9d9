"""The case library: annotated, de-identified cases on disk, safe against crashes.

Layout of a library folder::

    <root>/<case_id>/case.json       label, prediction, timestamps, content hash, safe metadata
    <root>/<case_id>/volume.nii.gz   voxels and geometry (written by ``save_nifti``)
    <root>/<case_id>/mask.nii.gz     optional lesion mask on the same grid
    <root>/.incoming/                cases and files being written (ignored; stale ones cleaned)
    <root>/.trash/<case_id>/         deleted cases, recoverable with ``restore``
    <root>/.drafts/<hash>.npz        autosaved mask of a scan not yet saved as a case

There is no index: the case folders *are* the library, so nothing can disagree with them. A case is
written whole into ``.incoming/<id>``, fsynced, and renamed into place as the last step, so a crash
leaves either the complete case or nothing visible. The same rename makes ``relabel`` atomic.

Drafts keep a lesion mask while it is being painted, so a crash of the viewer before the case is
saved loses at most the last moments of painting. A draft is keyed by the scan's content hash (the
hash its case will get), holds nothing but the mask and that hash, and is removed when the case
is saved.

De-identification: a case keeps voxels, geometry, the label, the model's prediction and a few
numeric acquisition values. It never holds a DICOM header, a source path, patient fields or free
text from the scanner (series descriptions are typed by technologists and sometimes hold names or
accession numbers, so they are dropped). Case IDs are random, not derived from any UID.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import re
import shutil
import threading
import uuid
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs

from napari_scan_classifier import limits
from napari_scan_classifier.errors import CaseLibraryError, ScanClassifierError
from napari_scan_classifier.io.nifti import load_nifti, save_nifti
from napari_scan_classifier.outputs import clean_stale
from napari_scan_classifier.volume import Volume

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CASE_FILE = "case.json"
VOLUME_FILE = "volume.nii.gz"
MASK_FILE = "mask.nii.gz"
INCOMING = ".incoming"
TRASH = ".trash"
DRAFTS = ".drafts"
DRAFT_SUFFIX = ".npz"

_CASE_ID = re.compile(r"[0-9a-f]{32}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CODE = re.compile(r"[A-Za-z0-9_]{1,16}")  # DICOM-style codes: modality, units
_CASE_FILES = "|".join(re.escape(name) for name in (CASE_FILE, VOLUME_FILE, MASK_FILE))
_MEMBER = re.compile(rf"({_CASE_ID.pattern})/({_CASE_FILES})")
_MAX_LABEL_CHARS = 128
_MAX_PREDICTION_BYTES = 64 * 1024
_MAX_CASE_JSON_BYTES = 1 << 20
_DISK_RESERVE_BYTES = 256 << 20  # an import never fills the disk to the last byte
# Numeric acquisition values worth keeping with a case; everything else in Volume.metadata is
# either free text (series_description), a key into the source (series_key) or not needed.
_NUMERIC_METADATA = (
    "spacing",
    "slice_thickness",
    "window_center",
    "window_width",
    "magnetic_field_strength",
)


def default_root() -> Path:
    """The per-user case folder used when the user has not chosen one."""
    return Path(platformdirs.user_data_dir("napari-scan-classifier")) / "cases"


@dataclass(frozen=True)
class CaseRecord:
    """What the library knows about one case, read from its ``case.json``."""

    case_id: str
    label: str
    modality: str
    shape: tuple[int, ...]
    spacing: tuple[float, float, float]
    has_mask: bool
    prediction: dict[str, Any] | None
    created: str
    modified: str
    content_hash: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "case_id": self.case_id,
            "label": self.label,
            "modality": self.modality,
            "shape": list(self.shape),
            "spacing": list(self.spacing),
            "has_mask": self.has_mask,
            "prediction": self.prediction,
            "created": self.created,
            "modified": self.modified,
            "content_hash": self.content_hash,
            "metadata": self.metadata,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CaseRecord:
        """Validate a parsed ``case.json`` (ours or an imported one) field by field.

        Unknown keys are dropped and metadata is filtered again, so an imported file cannot
        smuggle identifiers into the library.
        """
        if int(data.get("format_version", 0)) > FORMAT_VERSION:
            raise CaseLibraryError("written by a newer version of napari-scan-classifier")
        case_id = str(data["case_id"])
        content = str(data["content_hash"])
        shape = tuple(int(n) for n in data["shape"])
        spacing = tuple(float(s) for s in data["spacing"])
        if not _CASE_ID.fullmatch(case_id) or not _SHA256.fullmatch(content):
            raise CaseLibraryError("malformed case id or content hash")
        if len(shape) not in (3, 4) or min(shape) < 1 or len(spacing) != 3:
            raise CaseLibraryError("malformed shape or spacing")
        if not isinstance(data["has_mask"], bool):
            raise CaseLibraryError("malformed has_mask flag")
        return cls(
            case_id=case_id,
            label=clean_label(data["label"]),
            modality=_clean_modality(data["modality"]),
            shape=shape,
            spacing=spacing,  # type: ignore[arg-type]
            has_mask=data["has_mask"],
            prediction=_clean_prediction(data["prediction"]),
            created=_checked_timestamp(data["created"]),
            modified=_checked_timestamp(data["modified"]),
            content_hash=content,
            metadata=case_metadata(data.get("metadata") or {}),
        )


@dataclass(frozen=True)
class CorruptCase:
    """A case folder that could not be read; listed so the user can inspect or delete it."""

    case_id: str
    reason: str


@dataclass(frozen=True)
class ImportResult:
    """Cases added by ``import_zip``, and why others were not (duplicates, damaged files)."""

    imported: list[CaseRecord]
    skipped: list[str]


def clean_label(label: object) -> str:
    """A class label as stored: stripped, non-empty, printable, reasonably short."""
    if not isinstance(label, str) or not label.strip():
        raise CaseLibraryError("A case needs a class label (e.g. 'lesion'); the label is empty.")
    label = label.strip()
    if len(label) > _MAX_LABEL_CHARS or not label.isprintable():
        raise CaseLibraryError(
            f"A class label must be printable text of at most {_MAX_LABEL_CHARS} characters."
        )
    return label


def case_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a Volume's (already safe) metadata a case keeps: numbers and a unit code."""
    kept: dict[str, Any] = {}
    for key in _NUMERIC_METADATA:
        value = _finite_numbers(metadata.get(key))
        if value is not None:
            kept[key] = value
    units = metadata.get("units")
    if isinstance(units, str) and _CODE.fullmatch(units):
        kept["units"] = units
    return kept


def content_hash(voxels: np.ndarray, affine: np.ndarray) -> str:
    """sha256 of voxels (little-endian bytes, shape, dtype) and the affine.

    The affine is hashed as NIfTI stores it (float32) and rounded to 0.1 um, so a case loaded
    back from disk hashes exactly as it did when it was added.
    """
    data = np.ascontiguousarray(voxels, dtype=voxels.dtype.newbyteorder("<"))
    geometry = np.round(np.asarray(affine, dtype=np.float32).astype("<f8"), 4) + 0.0  # no -0.0
    digest = hashlib.sha256(f"{data.dtype.str}|{data.shape}|".encode())
    digest.update(geometry.tobytes())
    digest.update(data.reshape(-1).view(np.uint8))
    return digest.hexdigest()


def scan_key(volume: Volume) -> str:
    """The content hash the scan's case will get: keys its draft mask before the case exists."""
    return content_hash(_storable(volume.voxels), volume.affine)


class CaseLibrary:
    """Annotated cases in a folder: add, list, load, relabel, delete/restore, zip export/import,
    and drafts of masks being painted.

    Safe to use from several threads of one viewer; two processes may share a folder (writes
    never collide) but could both add the same scan if they do so at the same instant.
    """

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

    # -- drafts ----------------------------------------------------------------------------

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

    # -- exchange --------------------------------------------------------------------------

    def export_zip(self, path: Path | str, case_ids: Iterable[str] | None = None) -> Path:
        """Write cases (all by default) to a zip that ``import_zip`` reads; atomic."""
        path = Path(path)
        records = self.list() if case_ids is None else [self.get(c) for c in case_ids]
        temporary = path.with_name(f".partial-{uuid.uuid4().hex}.zip")
        try:
            with zipfile.ZipFile(temporary, "w") as archive:
                for record in records:
                    for name in _case_files(record):
                        archive.write(
                            self.root / record.case_id / name,
                            f"{record.case_id}/{name}",
                            zipfile.ZIP_DEFLATED if name == CASE_FILE else zipfile.ZIP_STORED,
                        )
            os.replace(temporary, path)
        except BaseException as error:
            temporary.unlink(missing_ok=True)
            if isinstance(error, OSError):
                raise CaseLibraryError(f"Could not write {path.name}: {error.strerror}") from error
            raise
        return path

    def import_zip(self, path: Path | str) -> ImportResult:
        """Add the cases of an exported zip, skipping duplicates and damaged cases.

        Every member name is checked before anything is extracted (no path can leave the
        library), and every case goes through the same checks and writer as ``add``: its
        volume is re-saved, so nothing but voxels and geometry comes in from foreign files.
        """
        path = Path(path)
        if not path.is_file():
            raise CaseLibraryError(f"{path.name} is not a readable zip file.")
        with limits.open_zip(path, path.name, CaseLibraryError) as archive:
            members = _members_by_case(archive, path.name)
            self._check_import_size(archive, path.name)
            staging = self.root / INCOMING / f"import-{uuid.uuid4().hex}"
            try:
                return self._import_cases(archive, members, staging)
            finally:
                shutil.rmtree(staging, ignore_errors=True)

    # -- internals -------------------------------------------------------------------------

    def _check_import_size(self, archive: zipfile.ZipFile, archive_name: str) -> None:
        """Before writing anything: no member encrypted, oddly compressed or a zip bomb, and all
        of them together fit the free disk space and each one the memory budget (a case's
        volume is loaded to be checked)."""
        limit = limits.memory_budget()
        for info in archive.infolist():
            limits.check_member(info, f"{archive_name}: {info.filename}", CaseLibraryError, limit)
        declared = sum(info.file_size for info in archive.infolist())
        free = limits.free_disk(self.root) - _DISK_RESERVE_BYTES
        if declared > free:
            raise CaseLibraryError(
                f"{archive_name} expands to {limits.format_bytes(declared)}, more than the "
                f"{limits.format_bytes(max(free, 0))} free beside the case library. Nothing was "
                "imported."
            )

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
        with contextlib.suppress(CaseLibraryError):  # saved; load_draft ignores a leftover anyway
            self.discard_draft(record.content_hash)
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

    def _import_cases(
        self, archive: zipfile.ZipFile, members: dict[str, set[str]], staging: Path
    ) -> ImportResult:
        imported: list[CaseRecord] = []
        skipped: list[str] = []
        for case_id, names in sorted(members.items()):
            try:
                imported.append(self._import_case(archive, case_id, names, staging / case_id))
            except CaseLibraryError as error:
                skipped.append(f"case {case_id}: {error}")
        return ImportResult(imported, skipped)

    def _import_case(
        self, archive: zipfile.ZipFile, case_id: str, names: set[str], folder: Path
    ) -> CaseRecord:
        limit = limits.memory_budget()
        try:
            folder.mkdir(parents=True)
            for name in names:  # names come from the fixed set in _MEMBER, never from the zip
                info = archive.getinfo(f"{case_id}/{name}")
                limits.extract_member(archive, info, folder / name, name, CaseLibraryError, limit)
        except OSError as error:
            raise self._write_error(error, "import the case") from error
        record = _read_record(folder)
        try:
            volume = load_nifti(folder / VOLUME_FILE)
            mask = load_nifti(folder / MASK_FILE) if record.has_mask else None
        except ScanClassifierError as error:
            raise CaseLibraryError(f"unreadable scan ({error})") from error
        taken = (self.root / case_id).exists() or (self.root / TRASH / case_id).exists()
        return self._add(
            Volume(volume.voxels, volume.affine, record.modality, dict(record.metadata)),
            record.label,
            mask=mask,
            prediction=record.prediction,
            case_id=None if taken else case_id,
            created=record.created,
        )

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

    def _draft_path(self, key: str) -> Path:
        if not isinstance(key, str) or not _SHA256.fullmatch(key):
            raise CaseLibraryError(f"'{key}' is not a scan key (64 hexadecimal characters).")
        return self.root / DRAFTS / f"{key}{DRAFT_SUFFIX}"

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


def _scan(folder: Path) -> tuple[list[CaseRecord], list[CorruptCase]]:
    """Read every case folder under ``folder``; names that are not case IDs are ignored."""
    records: list[CaseRecord] = []
    corrupt: list[CorruptCase] = []
    entries = sorted(folder.iterdir()) if folder.is_dir() else []
    for entry in entries:
        if not (_CASE_ID.fullmatch(entry.name) and entry.is_dir()):
            continue
        try:
            records.append(_read_record(entry))
        except CaseLibraryError as error:
            corrupt.append(CorruptCase(entry.name, str(error)))
    records.sort(key=lambda record: (record.created, record.case_id))
    return records, corrupt


def _read_record(folder: Path) -> CaseRecord:
    """The checked record of a case folder; any damage is a CaseLibraryError saying what."""
    data = _case_json(folder)
    try:
        record = CaseRecord.from_json(data)
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError) as e:
        raise CaseLibraryError(f"case {folder.name} has an unreadable {CASE_FILE}") from e
    except CaseLibraryError as error:
        raise CaseLibraryError(f"case {folder.name}: {error}") from error
    if record.case_id != folder.name:
        raise CaseLibraryError(f"case {folder.name} holds the record of another case")
    missing = [name for name in _case_files(record) if not (folder / name).is_file()]
    if missing:
        raise CaseLibraryError(f"case {folder.name} is missing {', '.join(missing)}")
    return record


def _case_json(folder: Path) -> Any:
    """A case's parsed ``case.json``, read with a size cap (never a pipe or device)."""
    file = folder / CASE_FILE
    if not file.is_file():  # missing, or a pipe or device that would block a read
        raise CaseLibraryError(f"case {folder.name} has no {CASE_FILE}")
    try:
        with open(file, "rb") as handle:
            raw = handle.read(_MAX_CASE_JSON_BYTES + 1)
        return limits.parse_json(raw, CASE_FILE, CaseLibraryError, _MAX_CASE_JSON_BYTES)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise CaseLibraryError(
            f"case {folder.name} has an unreadable {CASE_FILE} ({reason})"
        ) from error
    except CaseLibraryError as error:
        raise CaseLibraryError(
            f"case {folder.name} has an unreadable {CASE_FILE}: {error}"
        ) from error


def _members_by_case(archive: zipfile.ZipFile, archive_name: str) -> dict[str, set[str]]:
    """Check every member name before extracting anything; refuse the archive if one is unsafe.

    Names are not echoed in the error: a foreign archive may name files after patients.
    """
    members: dict[str, set[str]] = {}
    bad = 0
    for info in archive.infolist():
        match = _MEMBER.fullmatch(info.filename)
        if match:
            members.setdefault(match[1], set()).add(match[2])
        elif not (info.is_dir() and _CASE_ID.fullmatch(info.filename.rstrip("/"))):
            bad += 1
    if bad:
        raise CaseLibraryError(
            f"{archive_name} was refused: {bad} of its files are not laid out as an exported case "
            "library (a path outside a case folder, or an unknown file). Nothing was imported."
        )
    return members


def _case_files(record: CaseRecord) -> tuple[str, ...]:
    return (CASE_FILE, VOLUME_FILE, MASK_FILE) if record.has_mask else (CASE_FILE, VOLUME_FILE)


def _checked_id(case_id: str) -> str:
    """Refuse anything but a case ID, so a caller's string can never reach outside the library."""
    if not isinstance(case_id, str) or not _CASE_ID.fullmatch(case_id):
        raise CaseLibraryError(f"'{case_id}' is not a case ID (32 hexadecimal characters).")
    return case_id


def _storable(voxels: np.ndarray) -> np.ndarray:
    """Voxels in a type NIfTI stores without loss; nibabel refuses 64-bit integers and float16."""
    if voxels.size == 0:
        raise CaseLibraryError("The scan has no voxels.")
    kind, size = voxels.dtype.kind, voxels.dtype.itemsize
    if kind == "b":
        return voxels.astype(np.uint8)
    if kind == "f" and size == 2:
        return voxels.astype(np.float32)
    if kind in "iu" and size == 8:
        target = np.dtype(np.int32 if kind == "i" else np.uint32)
        limits = np.iinfo(target)
        if voxels.min() < limits.min or voxels.max() > limits.max:
            raise CaseLibraryError("The scan's voxel values do not fit 32-bit integers.")
        return voxels.astype(target)
    if kind not in "iuf":
        raise CaseLibraryError(f"Voxels of type {voxels.dtype} cannot be stored in a case.")
    return voxels


def _checked_mask(mask: np.ndarray | Volume | None, volume: Volume) -> np.ndarray | None:
    """The mask as small unsigned integers, refused unless it lies on the scan's voxel grid."""
    if mask is None:
        return None
    if isinstance(mask, Volume):
        if not np.allclose(mask.affine, volume.affine, atol=1e-4):
            raise CaseLibraryError(
                "The mask is on another grid than the scan (its position, orientation or spacing "
                "differs). Resample the mask onto the scan before saving the case."
            )
        mask = mask.voxels
    mask = np.asarray(mask)
    if mask.shape != volume.shape:
        raise CaseLibraryError(
            f"The mask is on another grid than the scan: its shape is {mask.shape}, the scan's "
            f"is {volume.shape}. Resample the mask onto the scan before saving the case."
        )
    return _label_voxels(mask)


def _label_voxels(mask: np.ndarray) -> np.ndarray:
    """A mask as the smallest unsigned integers that hold its labels (0 = background)."""
    mask = np.asarray(mask)
    kind = mask.dtype.kind
    whole = kind in "biu" or (kind == "f" and np.array_equal(mask, np.round(mask)))
    if not whole or mask.min() < 0:
        raise CaseLibraryError("A mask must hold whole label numbers (0 = background).")
    largest = int(mask.max())
    if largest > np.iinfo(np.uint32).max:
        raise CaseLibraryError("The mask's label numbers are too large to store.")
    return mask.astype(np.min_scalar_type(largest))


def _clean_prediction(prediction: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A JSON round trip: numpy numbers become floats, NaN and non-JSON values are refused."""
    if prediction is None:
        return None
    if not isinstance(prediction, Mapping):
        raise CaseLibraryError("A prediction must be a dict (probabilities by class, model).")
    try:
        text = json.dumps(dict(prediction), allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as error:
        raise CaseLibraryError(f"The prediction cannot be stored as JSON: {error}") from error
    except RecursionError:
        raise CaseLibraryError("The prediction is nested too deeply to store.") from None
    if len(text) > _MAX_PREDICTION_BYTES:
        raise CaseLibraryError("The prediction is too large to store with a case.")
    return json.loads(text)


def _json_default(value: object) -> object:
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _clean_modality(modality: object) -> str:
    return modality if isinstance(modality, str) and _CODE.fullmatch(modality) else "OT"


def _finite_numbers(value: object) -> float | list[float] | None:
    """A finite number or a flat list of them (DICOM multi-values), else None."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, list | tuple):
        return _finite_number(value)
    numbers = [_finite_number(item) for item in value]
    return [n for n in numbers if n is not None] if numbers and None not in numbers else None


def _finite_number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _checked_timestamp(value: object) -> str:
    datetime.fromisoformat(str(value))  # ValueError for anything but an ISO timestamp
    return str(value)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    with open(path, "x", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True, allow_nan=False)
        handle.flush()
        os.fsync(handle.fileno())


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
