"""The "Display" dock widget: one click sets a CT window on the selected image layer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import Container, Label, PushButton
from napari.layers import Image
from napari.utils.notifications import show_info

from napari_scan_classifier.plugin.layers import CT_WINDOWS, Window, dicom_window

if TYPE_CHECKING:
    import napari

FROM_FILE = "from file"


class DisplayWidget(Container):
    """CT window presets (width/level in HU) plus the window stored in the scan's DICOM header."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)
        self._viewer = viewer
        self.append(Label(value="CT window (width / level, HU)"))
        for name, window in CT_WINDOWS.items():
            self.append(
                self._button(f"{name.capitalize()}  {window.width:g} / {window.level:g}", name)
            )
        self.append(self._button("From file (DICOM window)", FROM_FILE))

    def _button(self, text: str, preset: str) -> PushButton:
        button = PushButton(text=text, name=preset.replace(" ", "_"))
        button.changed.connect(lambda: self.apply(preset))
        return button

    def apply(self, preset: str) -> None:
        """Set the selected image layer's contrast limits to ``preset`` (a CT_WINDOWS key or
        FROM_FILE); tell the user when there is no image layer or no stored window."""
        layer = self._viewer.layers.selection.active
        if not isinstance(layer, Image):
            show_info("Select an image layer to set its window.")
            return
        window = self._window(layer, preset)
        if window is None:
            show_info(f"'{layer.name}' has no window stored in its DICOM header.")
            return
        layer.contrast_limits = window.limits

    @staticmethod
    def _window(layer: Image, preset: str) -> Window | None:
        if preset == FROM_FILE:
            return dicom_window(layer.metadata)
        return CT_WINDOWS[preset]
