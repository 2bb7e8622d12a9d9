"""Shared test setup, kept small."""

import os

# Headless machines run Qt offscreen. Where a display exists (a desktop, or ``xvfb-run``) Qt uses
# it, so the tests that check rendered pixels can run.
if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
