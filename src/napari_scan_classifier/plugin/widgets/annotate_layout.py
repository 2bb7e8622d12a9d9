"""What the Annotate dock's sections share: layer and list-item keys, and small layout
helpers (a titled section, a row of widgets, a fixed-height list)."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import Container, Label
from magicgui.widgets.bases import Widget
from napari.layers import Image, Layer
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QListWidget

from napari_scan_classifier.plugin.layers import is_result_layer

MASK_KIND = "lesion_mask"
CASE_KEY = "scan_classifier_case"  # image layer metadata: the library case it shows
LIST_HEIGHT = 150  # px
DATA_ROLE = Qt.ItemDataRole.UserRole  # where a list item keeps its case id or ranking index


def is_scan(layer: Layer | None) -> bool:
    return isinstance(layer, Image) and not is_result_layer(layer)


def section_of(title: str, widgets: list[Any]) -> Container:
    titled = Container(widgets=[Label(value=f"<b>{title}</b>"), *widgets])
    titled.margins = (0, 4, 0, 4)
    return titled


def row_of(*widgets: Widget) -> Container:
    line = Container(widgets=list(widgets), layout="horizontal", labels=False)
    line.margins = (0, 0, 0, 0)
    return line


def list_widget(tooltip: str) -> QListWidget:
    widget = QListWidget()
    widget.setToolTip(tooltip)
    widget.setFixedHeight(LIST_HEIGHT)
    return widget
