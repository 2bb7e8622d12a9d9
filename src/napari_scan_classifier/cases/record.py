"""The layout of a case folder and its checked record, so every reader refuses damage alike."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from napari_scan_classifier import limits
from napari_scan_classifier.cases.deidentify import (
    _clean_modality,
    _clean_prediction,
    case_metadata,
    clean_label,
)
from napari_scan_classifier.errors import CaseLibraryError

FORMAT_VERSION = 1
CASE_FILE = "case.json"
VOLUME_FILE = "volume.nii.gz"
MASK_FILE = "mask.nii.gz"
INCOMING = ".incoming"
TRASH = ".trash"

_CASE_ID = re.compile(r"[0-9a-f]{32}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_CASE_JSON_BYTES = 1 << 20


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


def _case_files(record: CaseRecord) -> tuple[str, ...]:
    return (CASE_FILE, VOLUME_FILE, MASK_FILE) if record.has_mask else (CASE_FILE, VOLUME_FILE)


def _checked_id(case_id: str) -> str:
    """Refuse anything but a case ID, so a caller's string can never reach outside the library."""
    if not isinstance(case_id, str) or not _CASE_ID.fullmatch(case_id):
        raise CaseLibraryError(f"'{case_id}' is not a case ID (32 hexadecimal characters).")
    return case_id


def _checked_timestamp(value: object) -> str:
    datetime.fromisoformat(str(value))  # ValueError for anything but an ISO timestamp
    return str(value)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
