"""The Classify dock shows which model the chosen scan chooses and why, classifies with it, lets
the user override it with the model field, and says when no installed model covers the scan."""

from __future__ import annotations

from pathlib import Path

import pytest
from model_fixtures import tiny_bundle
from napari.components import ViewerModel
from napari.layers import Layer
from napari.utils.notifications import Notification, NotificationSeverity
from pytestqt.qtbot import QtBot

from napari_scan_classifier import phantoms
from napari_scan_classifier.models import save_bundle
from napari_scan_classifier.models.bundle import read_metadata
from napari_scan_classifier.models.bundled import bundled_model_path
from napari_scan_classifier.outputs import MODELS_FOLDER_VARIABLE
from napari_scan_classifier.plugin.layers import volume_to_layer_data
from napari_scan_classifier.plugin.widgets.classify import (
    CLASSIFICATION_KEY,
    IDENTIFYING,
    ClassifyWidget,
)
from napari_scan_classifier.volume import Volume

MR_HEAD = "tiny_mr_brain"
CT_VERSION = read_metadata(bundled_model_path()).version  # the shipped CT model's
WAIT_MS = 60_000
SMALL = {"shape": (24, 64, 64), "spacing": (7.0, 3.0, 3.0)}


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed MR head model beside the shipped CT abdomen one."""
    bundle = tiny_bundle(
        modality="MR", intensity={"kind": "zscore"}, name=MR_HEAD, body_region="head"
    )
    folder = tmp_path / "installed"
    save_bundle(bundle, folder / f"{MR_HEAD}-v1")
    monkeypatch.setenv(MODELS_FOLDER_VARIABLE, str(folder))
    return folder


def _add(viewer: ViewerModel, volume: Volume) -> Layer:
    layer = Layer.create(*volume_to_layer_data(volume))
    viewer.layers.append(layer)
    viewer.layers.selection.active = layer
    return layer


def _identified(qtbot: QtBot, widget: ClassifyWidget) -> None:
    qtbot.waitUntil(lambda: widget.choice.value != IDENTIFYING, timeout=WAIT_MS)


def _run(qtbot: QtBot, widget: ClassifyWidget) -> None:
    widget.run_button.clicked.emit()
    assert widget.worker is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)


def test_the_dock_shows_and_uses_the_scans_choice_and_the_users_override(
    viewer: ViewerModel, qtbot: QtBot, installed: Path, tmp_path: Path
) -> None:
    mr = phantoms.make_mr_phantom(1, **SMALL).volume
    widget = ClassifyWidget(viewer)
    widget.passes.value, widget.saliency.value = 0, "none"
    layer = _add(viewer, Volume(mr.voxels, mr.affine, "MR", {}))

    assert widget.choice.value == IDENTIFYING  # the voxels are read in a worker, not here
    _identified(qtbot, widget)
    assert widget.scan.value is layer
    assert widget.choice.value.startswith(f"Chosen by the scan: MR head: {MR_HEAD}")
    assert (
        "; modality from the scan's modality field; region from the body outline ("
    ) in widget.choice.value
    _run(qtbot, widget)

    result = layer.metadata[CLASSIFICATION_KEY]
    assert result["model"]["name"] == MR_HEAD
    assert result["model_choice"]["reason"].startswith(f"MR head: {MR_HEAD}")
    assert f"Chosen by the scan: MR head: {MR_HEAD}" in widget.summary.value

    given = save_bundle(tiny_bundle(name="my_ct_model"), tmp_path / "given")
    widget.model.value = given
    assert widget.choice.value.startswith(
        f"Given model overrides the scan's choice (MR head: {MR_HEAD}"
    )
    _run(qtbot, widget)

    result = layer.metadata[CLASSIFICATION_KEY]
    assert result["model"]["name"] == "my_ct_model" and "model_choice" not in result
    assert "Chosen by the scan" not in widget.summary.value


def test_a_scan_no_model_covers_is_not_classified(
    viewer: ViewerModel, qtbot: QtBot, installed: Path, notifications: list[Notification]
) -> None:
    ct = phantoms.make_ct_phantom(1, **SMALL).volume
    widget = ClassifyWidget(viewer)
    layer = _add(viewer, Volume(ct.voxels, ct.affine, "CT", {"body_part": "PELVIS"}))
    _identified(qtbot, widget)
    start = (
        "no installed model covers CT pelvis: install or train one (installed: demo_ct_lesion "
        f"v{CT_VERSION} for CT abdomen, "
    )
    end = (
        f"{MR_HEAD} v1 for MR head); modality from the scan's modality field; region from the "
        "header (BodyPartExamined PELVIS)"
    )

    assert widget.choice.value.startswith(f"No model: {start}")
    assert widget.choice.value.endswith(end)
    _run(qtbot, widget)

    errors = [n.message for n in notifications if n.severity == NotificationSeverity.ERROR]
    assert len(errors) == 1 and errors[0] == widget.choice.value.removeprefix("No model: ")
    assert errors[0].startswith(start) and errors[0].endswith(end)
    assert CLASSIFICATION_KEY not in layer.metadata
