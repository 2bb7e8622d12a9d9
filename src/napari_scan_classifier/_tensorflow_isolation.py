"""Load TensorFlow's shared libraries privately, so napari's software OpenGL survives beside it.

TensorFlow dlopens its framework library with ``RTLD_GLOBAL``, exporting the copy of LLVM linked
into it. Mesa's software rasteriser (llvmpipe: Xvfb, virtual machines, remote desktops) then
binds to TensorFlow's LLVM instead of its own and crashes the viewer (a segfault in
``swrast_dri.so``, or "free(): invalid pointer" at exit). Importing TensorFlow with
``RTLD_DEEPBIND`` and without ``RTLD_GLOBAL`` keeps each library on its own LLVM. The only thing
given up is ``tf.load_op_library`` for custom ops, which this package does not use.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any


class _PrivateSymbolsLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        flags = sys.getdlopenflags()
        sys.setdlopenflags(os.RTLD_NOW | os.RTLD_DEEPBIND)
        try:
            self._loader.exec_module(module)
        finally:
            sys.setdlopenflags(flags)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _PrivateTensorFlowFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, name: str, path: Any = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _PrivateSymbolsLoader(spec.loader)
        return spec


def isolate_tensorflow() -> None:
    """Arrange for the first ``import tensorflow`` to load it privately (Linux only)."""
    if not sys.platform.startswith("linux") or "tensorflow" in sys.modules:
        return
    if not hasattr(os, "RTLD_DEEPBIND"):
        return
    # TensorFlow forces RTLD_GLOBAL through this module when it exists; None disables it.
    sys.modules.setdefault("tensorflow.python.pywrap_dlopen_global_flags", None)
    sys.meta_path.insert(0, _PrivateTensorFlowFinder())
