"""Keep the file and folder names of inputs out of what we print and write.

Folders of scans are routinely named after patients, and third-party libraries (nibabel, pydicom,
zipfile) quote full paths in their errors. Outputs therefore name an input by its position on the
command line (``<input 2>``) and a series by its hashed key, and every message passes through
:class:`Redactor` on its way out.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TextIO

# A quoted path ('/a/b', "C:\\a", './a'), or an unquoted absolute one up to the next space.
_QUOTED_PATH = re.compile(r"""(['"])(?:[A-Za-z]:[\\/]|[/\\]|~[\\/]|\.{1,2}[\\/])[^'"\n]*\1""")
_BARE_PATH = re.compile(r"""(?<![\w.%~>-])(?:[A-Za-z]:[\\/]|/|~/)[^\s'"]+""")
_WRITTEN_UNDER = r"""(?=$|[\s'"\\/])(?:[\\/][^\s'"]*)?"""  # a file under a chosen output
MIN_NAME_CHARS = 3  # shorter names cannot identify anyone, and replacing them would garble text
THE_INPUT = "the input"  # how the core's messages name a file or folder it was given


def numbered(text: str, number: int) -> str:
    """``text`` with the core's name for an input at its start (``the input: ...``) made
    ``<input N>``: the command or viewer knows which of its inputs failed, the core does not."""
    return renamed(text, f"<input {number}>")


def renamed(text: str, name: str) -> str:
    """``text`` with the core's name for an input at its start replaced by ``name``."""
    return name + text[len(THE_INPUT) :] if text.startswith(THE_INPUT) else text


def strip_paths(text: str, *known: str | os.PathLike[str]) -> str:
    """``text`` with absolute or quoted paths, and the ``known`` paths however spelled
    (relative ones too), replaced by ``<path>``."""
    spellings = {
        s for p in known for s in (os.fspath(p), os.path.abspath(p), str(Path(p).resolve()))
    }
    for spelling in sorted(spellings, key=len, reverse=True):
        text = text.replace(spelling, "<path>")
    text = _QUOTED_PATH.sub(lambda m: f"{m[1]}<path>{m[1]}", text)
    return _BARE_PATH.sub("<path>", text)


class Redactor:
    """Replaces the paths and names of a command's inputs by their position, then any other path.

    ``inputs`` are the paths as given on the command line (input 1, 2, ...); ``found`` adds the
    names of files met under them (skipped files, their folders). Paths in ``keep`` (the outputs
    the user chose) are printed as they are.
    """

    def __init__(
        self,
        inputs: Sequence[str | os.PathLike[str]] = (),
        keep: Sequence[str | os.PathLike[str]] = (),
    ) -> None:
        self._keep = sorted({s for p in keep for s in _spellings(Path(p))}, key=len, reverse=True)
        self._spellings: dict[str, str] = {}
        self._names: dict[str, str] = {}
        for number, given in enumerate(inputs, start=1):
            label = f"<input {number}>"
            path = Path(given)
            for spelling in _spellings(path):
                self._spellings.setdefault(spelling, label)
            for name in [path.name, path.parent.name, path.resolve().name]:
                self._add_name(name, label)

    def found(self, path: str | os.PathLike[str], root: str | os.PathLike[str]) -> None:
        """Hide the names between ``root`` (an input) and ``path`` (a file found under it)."""
        path, root = Path(path), Path(root)
        try:
            parts = path.resolve().relative_to(root.resolve()).parts
        except ValueError:
            parts = path.parts[-2:]
        for name in parts:
            self._add_name(name, "<file>")

    def __call__(self, text: str) -> str:
        kept: list[str] = []
        for spelling in self._keep:  # first: an output may start like an input
            pattern = f"({re.escape(spelling)})" + _WRITTEN_UNDER
            text = re.sub(pattern, lambda match: self._hidden(match, kept), text)
        for spelling in sorted(self._spellings, key=len, reverse=True):
            text = text.replace(spelling, self._spellings[spelling])
        text = strip_paths(text)
        text = self._without_names(text)
        for number, path in enumerate(kept):
            text = text.replace(f"\0{number}\0", path)
        return text

    def _hidden(self, match: re.Match[str], kept: list[str]) -> str:
        """A chosen output behind a placeholder, with the file under it that the command wrote
        (``out/series_001_CT.nii.gz``), unless that names an input."""
        path = match[0]
        under = path[len(match[1]) :]
        if any(s in path for s in self._spellings) or self._without_names(under) != under:
            path = match[1]
        kept.append(path)
        return f"\0{len(kept) - 1}\0" + match[0][len(path) :]

    def _without_names(self, text: str) -> str:
        for name in sorted(self._names, key=len, reverse=True):
            pattern = rf"(?<![A-Za-z0-9]){re.escape(name)}(?![A-Za-z0-9])"
            text = re.sub(pattern, self._names[name], text)
        return text

    def _add_name(self, name: str, label: str) -> None:
        if len(name) >= MIN_NAME_CHARS and name not in (".", ".."):
            self._names.setdefault(name, label)


class RedactingStream(io.TextIOBase):
    """A text stream that redacts every line before passing it on (stdout/stderr of the CLI)."""

    def __init__(self, target: TextIO, redact: Redactor) -> None:
        self._target = target
        self._redact = redact
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._target.write(self._redact(line) + "\n")
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self._target.write(self._redact(self._pending))
            self._pending = ""
        self._target.flush()

    def fileno(self) -> int:
        return self._target.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._target.encoding

    def isatty(self) -> bool:
        return self._target.isatty()


def _spellings(path: Path) -> Iterable[str]:
    """Ways a path may be quoted: as given, absolute, resolved (longest replaced first)."""
    seen = {str(path), os.path.abspath(path), str(path.resolve())}
    return [s for s in seen if "/" in s or os.sep in s]  # bare names go by whole words
