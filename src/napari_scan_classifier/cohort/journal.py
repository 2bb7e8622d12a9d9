"""The JSON Lines journal that makes a cohort resumable: one synced line per series."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from napari_scan_classifier.cohort.refs import AutoRef, BundleRef
from napari_scan_classifier.errors import ScanClassifierError
from napari_scan_classifier.results import json_safe

JOURNAL_SUFFIX = ".jsonl"
# How messages name the journal: by its place, not its name (an --out may be named after a patient)
_JOURNAL = f"the results journal beside --out (its {JOURNAL_SUFFIX} file)"


class Journal:
    """The JSON Lines results file: read what an earlier run wrote, append one row at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def rows(self) -> list[dict[str, Any]]:
        """Rows already written; a last line cut short by a kill is dropped (and cut off)."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):
            with self.path.open("r+b") as stream:
                stream.truncate(len(complete))
        try:
            return [json.loads(line) for line in complete.decode("utf-8").splitlines() if line]
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ScanClassifierError(
                f"{_JOURNAL} is not a results journal of this program ({error}); "
                "choose another --out"
            ) from None

    def append(self, row: dict[str, Any]) -> None:
        line = json.dumps(json_safe(row), allow_nan=False) + "\n"
        with self.path.open("a", encoding="utf-8") as stream:
            stream.write(line)
            stream.flush()
            os.fsync(stream.fileno())


def journal_path(out: Path) -> Path:
    """``results.json`` / ``results.csv`` -> ``results.jsonl`` beside it."""
    return out.with_suffix(JOURNAL_SUFFIX)


def _check_same_bundle(rows: Iterable[dict[str, Any]], ref: BundleRef | AutoRef) -> None:
    refs = [ref] if isinstance(ref, BundleRef) else [r for _, r in ref.models]
    found = {(row.get("bundle") or {}).get("sha256") for row in rows} - {None}
    other = found - {r.sha256 for r in refs}
    if other:
        models = (
            f"{ref.name} v{ref.version}"
            if isinstance(ref, BundleRef)
            else "the models the scans choose"
        )
        raise ScanClassifierError(
            f"{_JOURNAL} holds results of another model (SHA-256 "
            f"{sorted(map(str, other))[0][:12]}); choose another --out to classify with {models}"
        )


def check_same_frame(rows: Iterable[dict[str, Any]], frame: int | None) -> None:
    """A journal's rows answer for the 4D volume that was asked for: resuming with another
    --frame would keep the other frame's answers (and the failures of 4D series without one)."""
    found = {row.get("frame_requested") for row in rows} - {frame}
    if found:
        asked = sorted(found, key=lambda f: -1 if f is None else f)[0]
        earlier = "no --frame" if asked is None else f"--frame {asked}"
        now = "no --frame" if frame is None else f"--frame {frame}"
        raise ScanClassifierError(
            f"{_JOURNAL} holds results made with {earlier}; choose another --out to classify "
            f"with {now}"
        )
