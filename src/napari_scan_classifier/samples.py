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
from napari_scan_classifier.phantoms import write_sample_data

_CHECKOUT_SAMPLES = Path(__file__).resolve().parents[2] / "sample_data"
# The names ``phantoms.write_sample_data`` writes.
CT_SAMPLE = "ct_phantom"
MR_SAMPLE = "mr_phantom.nii.gz"


def sample_dir() -> Path:
    """The checkout's ``sample_data/`` if there is one, else a generated copy in the user cache."""
    if (_CHECKOUT_SAMPLES / CT_SAMPLE).is_dir() and (_CHECKOUT_SAMPLES / MR_SAMPLE).is_file():
        return _CHECKOUT_SAMPLES
    cache = Path(platformdirs.user_cache_dir("napari-scan-classifier")) / f"samples-{__version__}"
    if not cache.is_dir():
        _generate(cache)
    return cache


def sample_ct_path() -> Path:
    return sample_dir() / CT_SAMPLE


def sample_mr_path() -> Path:
    return sample_dir() / MR_SAMPLE


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
