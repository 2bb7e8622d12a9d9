"""The npe2 manifest: valid, importable, consistent, and what napari discovers from the install."""

from __future__ import annotations

from pathlib import Path

import pytest
from npe2 import PluginManifest

PLUGIN = "napari-scan-classifier"
REPO_MANIFEST = Path(__file__).resolve().parents[2] / "napari.yaml"


def check_manifest(manifest: PluginManifest) -> None:
    """What ``npe2 validate --imports`` checks, plus what it does not: every contribution names a
    declared command (npe2 accepts a typo there, and the menu entry then fails at click time)."""
    manifest.validate_imports()
    declared = {command.id for command in manifest.contributions.commands or ()}
    contributions = manifest.contributions
    referenced = {
        c.command
        for group in (
            contributions.readers,
            contributions.writers,
            contributions.widgets,
            contributions.sample_data,
        )
        for c in group or ()
    }
    assert referenced <= declared, f"undeclared commands: {sorted(referenced - declared)}"


def test_installed_manifest_is_valid() -> None:
    check_manifest(PluginManifest.from_distribution(PLUGIN))


def test_installed_manifest_is_the_repository_file() -> None:
    assert PluginManifest.from_distribution(PLUGIN) == PluginManifest.from_file(REPO_MANIFEST)


def test_contributions() -> None:
    contributions = PluginManifest.from_file(REPO_MANIFEST).contributions
    (reader,) = contributions.readers
    assert reader.accepts_directories
    assert {"*.dcm", "*.nii", "*.nii.gz"} <= set(reader.filename_patterns)
    assert sorted(tuple(w.layer_types) for w in contributions.writers) == [("image",), ("labels",)]
    assert {s.key for s in contributions.sample_data} == {
        "phantom_ct",
        "phantom_mr",
        "phantom_mr_infarct",
    }
    assert [w.display_name for w in contributions.widgets] == [
        "Display",
        "Classify scan",
        "Annotate cases",
        "Train model",
        "Open from PACS",
    ]


@pytest.mark.parametrize(
    ("good", "broken"),
    [
        ("plugin.reader:get_reader", "plugin.reader:get_raeder"),
        ("command: napari-scan-classifier.display_widget", "command: napari-scan-classifier.nope"),
        ('layer_types: ["labels"]', 'layer_types: ["label"]'),
    ],
    ids=["bad python name", "undeclared command", "bad layer type"],
)
def test_broken_manifest_is_caught(tmp_path: Path, good: str, broken: str) -> None:
    text = REPO_MANIFEST.read_text()
    assert good in text
    path = tmp_path / "napari.yaml"
    path.write_text(text.replace(good, broken))

    with pytest.raises((ValueError, AssertionError)):
        check_manifest(PluginManifest.from_file(path))
