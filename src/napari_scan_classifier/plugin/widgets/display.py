"""The "Display" dock widget: one click sets a CT window on a scan.

A window only makes sense on a scan's intensities, never on a saliency map, a probability map or
a mask (a lung window washes a 0-1 heat map out). So a preset goes to the selected layer when it
is a scan, else to the scan the selected layer belongs to (a result layer names its scan; a mask
lies on its scan's grid), and the dock says which layer it changed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import Container, Label, PushButton
from napari.utils.notifications import show_info

from napari_scan_classifier.plugin.layers import CT_WINDOWS, Window, dicom_window, scan_of
from napari_scan_classifier.plugin.layout import scroll_when_docked

if TYPE_CHECKING:
    import napari
    from napari.layers import Image

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
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self.append(self.status)
        scroll_when_docked(self)

    def _button(self, text: str, preset: str) -> PushButton:
        button = PushButton(text=text, name=preset.replace(" ", "_"))
        button.changed.connect(lambda: self.apply(preset))
        return button

    def apply(self, preset: str) -> Image | None:
        """Set the contrast limits of the selected scan (or the scan the selected layer belongs
        to) to ``preset`` (a CT_WINDOWS key or FROM_FILE); returns the layer changed, or None
        after telling the user why nothing was."""
        active = self._viewer.layers.selection.active
        layer = scan_of(active, self._viewer.layers) if active is not None else None
        if layer is None:
            self.status.value = ""
            show_info("Select a scan (an image layer) to set its window.")
            return None
        window = self._window(layer, preset)
        if window is None:
            show_info(f"'{layer.name}' has no window stored in its DICOM header.")
            return None
        layer.contrast_limits = window.limits
        self.status.value = f"Window {window.width:g} / {window.level:g} set on '{layer.name}'."
        return layer

    @staticmethod
    def _window(layer: Image, preset: str) -> Window | None:
        if preset == FROM_FILE:
            return dicom_window(layer.metadata)
        return CT_WINDOWS[preset]
