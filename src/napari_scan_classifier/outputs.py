"""Output files and folders: checked before the work, written atomically, leftovers cleaned.

A command that classifies or trains for an hour must not fail at the end because its output
folder is read-only, its parent is a file or its name is too long: :func:`check_folder` proves
the folder takes a file of the longest name we will write, before any work starts.

Everything is staged under a hidden name ending in ``.partial`` (or starting ``.partial-``) beside
its target and renamed into place, so a killed process leaves at most such a leftover;
:func:`clean_stale` removes those older than an hour (younger ones may belong to a live process).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from napari_scan_classifier.errors import ScanClassifierError

FILE_MODE = 0o644
FOLDER_MODE = 0o755
STAGING_SUFFIX = ".partial"
STALE_AFTER_S = 3600.0
STAGING_EXTRA_CHARS = 20  # what staging adds to a name: dots, random letters, ".partial"
MODELS_FOLDER_VARIABLE = "NAPARI_SCAN_CLASSIFIER_MODELS"  # overrides the installed-models folder


class OutputError(ScanClassifierError):
    """An output file or folder cannot be written (checked before the work starts)."""


def check_folder(folder: str | os.PathLike[str], longest_name: int, what: str) -> Path:
    """Prove, without creating anything, that ``folder`` (or the nearest folder above it that
    exists, where it will be created) takes a new file of ``longest_name`` characters plus its
    staging name; raises OutputError saying what is wrong."""
    target = Path(folder).expanduser()
    existing = next((p for p in (target, *target.parents) if p.exists()), Path.cwd())
    if not existing.is_dir():
        raise OutputError(f"{what}: '{existing.name}' is a file, not a folder")
    # Named like our staging files, so a probe left by a kill is cleaned like them.
    filler = max(longest_name + STAGING_EXTRA_CHARS - 1 - len(STAGING_SUFFIX), 1)
    probe = existing / ("." + "p" * filler + STAGING_SUFFIX)
    try:
        handle = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
    except OSError as error:
        if error.errno == errno.ENAMETOOLONG:
            allowed = _name_max(existing) - STAGING_EXTRA_CHARS
            raise OutputError(
                f"{what}: a name of {longest_name} characters is too long for this folder "
                f"(at most {allowed})"
            ) from None
        raise OutputError(f"{what}: the folder is not writable ({_reason(error)})") from None
    os.close(handle)
    os.unlink(probe)
    return target


def check_name(name: str, what: str, limit: int) -> str:
    """Refuse a name (model name, file name) longer than ``limit`` characters, before the work."""
    if len(name) > limit:
        raise OutputError(f"{what} has {len(name)} characters; at most {limit} are allowed")
    return name


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``path`` whole or not at all (staged beside it, fsynced, renamed), mode 0644."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, scratch = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=STAGING_SUFFIX, dir=path.parent
    )
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as stream:
            stream.write(text)
            stream.flush()
            os.fchmod(stream.fileno(), FILE_MODE)
            os.fsync(stream.fileno())
        os.replace(scratch, path)
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise
    return path


def staging_folder(target: Path) -> Path:
    """A fresh hidden folder beside ``target`` (same file system, so the rename is atomic), with
    the usual folder mode (``mkdtemp`` makes it private)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target.parent)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{target.name}.", suffix=STAGING_SUFFIX, dir=target.parent)
    )
    staging.chmod(FOLDER_MODE)
    return staging


def is_staging(name: str) -> bool:
    """Whether ``name`` is one of our staging leftovers."""
    return name.startswith(".") and (name.endswith(STAGING_SUFFIX) or name.startswith(".partial-"))


def clean_stale(
    folder: str | os.PathLike[str],
    older_than_s: float = STALE_AFTER_S,
    matching: Callable[[str], bool] = is_staging,
) -> int:
    """Remove staging leftovers of killed saves in ``folder`` (the entries whose names are
    ``matching``, last changed over ``older_than_s`` ago: recent ones may belong to a save still
    under way in another process); returns how many."""
    root = Path(folder)
    if not root.is_dir():
        return 0
    cutoff = time.time() - older_than_s
    removed = 0
    for entry in root.iterdir():
        if not matching(entry.name):
            continue
        with contextlib.suppress(OSError):
            if entry.lstat().st_mtime >= cutoff:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed += 1
    return removed


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _reason(error: OSError) -> str:
    if isinstance(error, PermissionError) or error.errno == errno.EROFS:
        return "permission denied or read-only"
    return error.strerror or type(error).__name__


def models_folder() -> Path:
    """Where trained models are saved and found (the Train dock, ``--model auto``):
    ``$NAPARI_SCAN_CLASSIFIER_MODELS``, else the user's data folder."""
    given = os.environ.get(MODELS_FOLDER_VARIABLE)
    if given:
        return Path(given).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-scan-classifier")) / "models"
