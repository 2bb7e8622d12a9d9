"""Cases to and from zip files, with every member checked before anything is written."""

from __future__ import annotations

import os
import re
import shutil
import uuid
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from napari_scan_classifier import limits
from napari_scan_classifier.cases.record import (
    _CASE_ID,
    CASE_FILE,
    INCOMING,
    MASK_FILE,
    TRASH,
    VOLUME_FILE,
    CaseRecord,
    _case_files,
    _read_record,
)
from napari_scan_classifier.cases.store import CaseStore
from napari_scan_classifier.errors import CaseLibraryError, ScanClassifierError
from napari_scan_classifier.io.nifti import load_nifti
from napari_scan_classifier.volume import Volume

_CASE_FILES = "|".join(re.escape(name) for name in (CASE_FILE, VOLUME_FILE, MASK_FILE))
_MEMBER = re.compile(rf"({_CASE_ID.pattern})/({_CASE_FILES})")
_DISK_RESERVE_BYTES = 256 << 20  # an import never fills the disk to the last byte


@dataclass(frozen=True)
class ImportResult:
    """Cases added by ``import_zip``, and why others were not (duplicates, damaged files)."""

    imported: list[CaseRecord]
    skipped: list[str]


class ExchangeMixin(CaseStore):
    """Export cases to a zip and import them from one through the same checks as ``add``."""

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
