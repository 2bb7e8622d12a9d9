"""The canvas font's glyphs are rendered ahead of time, one per event-loop turn, so the first
prediction on the canvas does not render them all in one freeze."""

from __future__ import annotations

import pytest
from napari.components import ViewerModel
from napari.utils._proxies import PublicOnlyProxy
from qt_support import opengl_available

from napari_scan_classifier.plugin.glyphs import CHARACTERS, canvas_font, warm_glyphs
from napari_scan_classifier.plugin.widgets.classify import prediction_text
from napari_scan_classifier.results.text import slice_text


def test_the_overlay_texts_use_only_warmed_characters() -> None:
    result = {
        "predicted_class": "lesion",
        "probabilities": {"normal": 0.15, "lesion": 0.85},
        "per_slice": {"normal": [0.9, 0.17], "lesion": [0.1, 0.83]},
    }
    texts = prediction_text(result) + slice_text(result, 1)
    assert set(texts) <= set(CHARACTERS)


def test_a_viewer_without_a_canvas_has_nothing_to_warm() -> None:
    assert canvas_font(ViewerModel()) is None
    assert warm_glyphs(ViewerModel()) is None


def test_glyphs_are_rendered_one_per_turn_until_all_are_there(viewer, qtbot) -> None:
    if not opengl_available():
        pytest.skip("needs a canvas (OpenGL)")
    font = canvas_font(viewer)
    text = "Predicted: tumour (p = 0.97)"
    rendered_before = set(font._glyphs)

    timer = warm_glyphs(viewer, text)

    assert timer is not None and timer.isActive()
    assert set(font._glyphs) == rendered_before  # nothing yet: the work waits for idle turns
    qtbot.waitUntil(lambda: not timer.isActive(), timeout=20_000)
    assert set(text) <= set(font._glyphs)
    assert canvas_font(PublicOnlyProxy(viewer)) is font  # as a dock widget gets the viewer
