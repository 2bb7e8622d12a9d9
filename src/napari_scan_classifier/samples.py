"""Where the sample scans live: the checkout's ``sample_data/``, or a generated copy.

An installed wheel carries no sample files, so they are generated once (deterministically, by the
phantom generator) into the user cache. The plugin's sample menu and the command-line demo share
this, so both show the same scans.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import platformdirs

from napari_scan_classifier import __version__
from napari_scan_classifier.phantoms import SAMPLE_MR_INFARCT, SAMPLE_MR_TUMOUR, write_sample_data

_CHECKOUT_SAMPLES = Path(__file__).resolve().parents[2] / "sample_data"
# The names ``phantoms.write_sample_data`` writes.
CT_SAMPLE = "ct_phantom"
MR_SAMPLE = SAMPLE_MR_TUMOUR
MR_INFARCT_SAMPLE = SAMPLE_MR_INFARCT


def sample_dir() -> Path:
    """The checkout's ``sample_data/`` if there is one, else a generated copy in the user cache."""
    if _complete(_CHECKOUT_SAMPLES):
        return _CHECKOUT_SAMPLES
    cache = Path(platformdirs.user_cache_dir("napari-scan-classifier")) / f"samples-{__version__}"
    if cache.is_dir() and not _complete(cache):  # written before a sample was added
        shutil.rmtree(cache, ignore_errors=True)
    if not cache.is_dir():
        _generate(cache)
    return cache


def _complete(folder: Path) -> bool:
    """Does ``folder`` hold every sample scan?"""
    files = (folder / name for name in (MR_SAMPLE, MR_INFARCT_SAMPLE))
    return (folder / CT_SAMPLE).is_dir() and all(path.is_file() for path in files)


def sample_ct_path() -> Path:
    return sample_dir() / CT_SAMPLE


def sample_mr_path() -> Path:
    """The brain MR with a tumour."""
    return sample_dir() / MR_SAMPLE


def sample_mr_infarct_path() -> Path:
    """The brain MR with an infarct."""
    return sample_dir() / MR_INFARCT_SAMPLE


def _generate(target: Path) -> None:
    """Write into a scratch folder and rename it into place, so a crash never leaves half a set."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
    try:
        write_sample_data(scratch)
        scratch.rename(target)
    except OSError:  # another process may have generated it at the same time
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
