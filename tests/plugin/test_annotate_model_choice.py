"""The Annotate dock's ranking with no model given: each open scan is ranked by the model its
modality and body region choose, each entry names that model, a scan no installed model covers
is listed apart with the reason, and the label choices follow the model that ranked the scan."""

from __future__ import annotations

from pathlib import Path

import pytest
from model_fixtures import CLASSES, RANKING_MR_CLASSES, save_ranking_models
from napari.components import ViewerModel
from napari.layers import Layer
from pytestqt.qtbot import QtBot

from napari_scan_classifier.active_learning import Ranked, rank_by_uncertainty
from napari_scan_classifier.models import load_bundle
from napari_scan_classifier.outputs import MODELS_FOLDER_VARIABLE
from napari_scan_classifier.phantoms import (
    make_ct_phantom,
    make_head_ct_phantom,
    make_mr_phantom,
)
from napari_scan_classifier.plugin.layers import scan_volume, volume_to_layer_data
from napari_scan_classifier.plugin.widgets.annotate import AnnotateWidget
from napari_scan_classifier.plugin.widgets.annotate_ranking import OOD_ITEM_COLOR
from napari_scan_classifier.volume import Volume

SMALL = {"shape": (24, 64, 64), "spacing": (7.0, 3.0, 3.0)}  # shapes choice.py tells apart
JOB_TIMEOUT_MS = 60_000


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A CT trunk and an MR head model installed beside the shipped ones (installed first)."""
    folder = tmp_path / "installed"
    models = save_ranking_models(folder)
    monkeypatch.setenv(MODELS_FOLDER_VARIABLE, str(folder))
    return models


def add(viewer: ViewerModel, volume: Volume) -> Layer:
    layer = Layer.create(*volume_to_layer_data(volume))
    viewer.layers.append(layer)
    return layer


def expected_parts(ranked: Ranked, layer: Layer, model: str) -> list[str]:
    """The entry's text split at " · ", its score left out (compared apart)."""
    p = ranked.probabilities[ranked.predicted_class]
    return [
        f"{ranked.rank}. {layer.name}",
        f"predicted {ranked.predicted_class} (p = {p:.2f})",
        f"by {model}",
    ]


def test_each_open_scan_is_ranked_by_the_model_it_chooses(
    qtbot: QtBot, viewer, installed, tmp_path: Path, notifications
) -> None:
    cts = [add(viewer, make_ct_phantom(seed, **SMALL).volume) for seed in range(2)]
    head_ct = add(viewer, make_head_ct_phantom(1, **SMALL).volume)
    mr = add(viewer, make_mr_phantom(0, **SMALL).volume)
    widget = AnnotateWidget(viewer)
    widget.library.value = tmp_path / "library"
    widget.measure.value = "margin"
    widget.passes.value = 2
    assert widget.model.line_edit.value == ""  # the default: chosen by each scan

    assert widget.rank() is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=JOB_TIMEOUT_MS)

    options = {"measure": "margin", "passes": 2}
    by_ct = rank_by_uncertainty(
        [scan_volume(x) for x in cts], load_bundle(installed["CT"]), **options
    )
    by_mr = rank_by_uncertainty([scan_volume(mr)], load_bundle(installed["MR"]), **options)
    shown = [widget.ranking.item(i).text().split(" · ") for i in range(widget.ranking.count())]
    assert len(shown) == 4
    expected = [expected_parts(r, cts[r.item], "tiny_ct_trunk v1") for r in by_ct]
    expected += [expected_parts(by_mr[0], mr, "tiny_mr_head v1")]
    assert [[parts[0], *parts[2:]] for parts in shown[:3]] == expected
    scores = [float(parts[1].removeprefix("margin ")) for parts in shown[:3]]
    assert scores == pytest.approx([r.score for r in by_ct + by_mr], abs=1e-3)
    assert (
        widget.ranking.item(2).toolTip() == "MR head: tiny_mr_head (also matching: demo_mr_brain)"
    )

    uncovered = widget.ranking.item(3)  # the head CT: apart, last, greyed, never ranked
    assert uncovered.text().startswith(
        f"{head_ct.name} · not ranked: no installed model covers CT head: install or train one "
        "(installed: "
    )
    assert uncovered.foreground().color().name() == OOD_ITEM_COLOR
    assert "; modality from " in uncovered.toolTip() and "region from " in uncovered.toolTip()
    assert [n.message for n in notifications] == [
        "Not ranked: 1 of the scans, which no installed model covers (listed last, with the "
        "reason)."
    ]

    for layer, own, other in [(mr, RANKING_MR_CLASSES, "lesion"), (cts[0], CLASSES, "tumour")]:
        widget.scan.value = layer  # the classes of the model that ranked this scan only
        assert set(own) <= set(widget.class_label.choices)
        assert other not in widget.class_label.choices
    widget.scan.value = head_ct
    assert not {"lesion", "tumour"} & set(widget.class_label.choices)

    widget.ranking.itemClicked.emit(uncovered)  # a scan set apart is still opened on click
    assert viewer.layers.selection.active is head_ct


def test_a_given_model_still_ranks_every_scan(
    qtbot: QtBot, viewer, installed, tmp_path: Path, notifications
) -> None:
    layers = [
        add(viewer, make_ct_phantom(0, **SMALL).volume),
        add(viewer, make_head_ct_phantom(1, **SMALL).volume),
    ]
    widget = AnnotateWidget(viewer)
    widget.library.value = tmp_path / "library"
    widget.model.value = installed["CT"] / "bundle.json"
    widget.passes.value = 2

    assert widget.rank() is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=JOB_TIMEOUT_MS)

    expected = rank_by_uncertainty(
        [scan_volume(layer) for layer in layers], load_bundle(installed["CT"]), passes=2
    )
    shown = [widget.ranking.item(i).text() for i in range(widget.ranking.count())]
    assert [text.split(" · ")[0] for text in shown] == [
        f"{r.rank}. {layers[r.item].name}" for r in expected
    ]
    assert all(text.split(" · ")[3] == "by tiny_ct_trunk v1" for text in shown)
    assert not any(n.message.startswith("Not ranked") for n in notifications)
