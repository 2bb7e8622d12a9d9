"""Load TensorFlow's shared libraries privately, so napari's software OpenGL survives beside it.

TensorFlow dlopens its framework library with ``RTLD_GLOBAL``, exporting the copy of LLVM linked
into it. Mesa's software rasteriser (llvmpipe: Xvfb, virtual machines, remote desktops) then
binds to TensorFlow's LLVM instead of its own and crashes the viewer (a segfault in
``swrast_dri.so``, or "free(): invalid pointer" at exit). Importing TensorFlow with
``RTLD_DEEPBIND`` and without ``RTLD_GLOBAL`` keeps each library on its own LLVM. The only thing
given up is ``tf.load_op_library`` for custom ops, which this package does not use.

It also loads TensorFlow quietly unless ``NAPARI_SCAN_CLASSIFIER_VERBOSE`` is set (the command
line's ``--verbose``): its C++ log level and Python loggers are set before it loads. Some native
lines (absl's "before InitializeLog" notice, oneDNN, CUDA probing) are written to file
descriptor 2 before any setting can apply; :class:`NativeLogFilter` drops those from the
command line's stderr and passes everything else through.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import re
import sys
import threading
from types import ModuleType, TracebackType
from typing import Any

VERBOSE_VARIABLE = "NAPARI_SCAN_CLASSIFIER_VERBOSE"
QUIET_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "3", "GRPC_VERBOSITY": "ERROR"}
# absl/glog lines: "I0000 00:00:1796520072.680267    9597 port.cc:153] ...", and absl's notice.
NATIVE_LOG_LINE = re.compile(
    rb"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^ :]+:\d+\] "
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called)"
)
_MAYBE_NATIVE = re.compile(rb"^(?:[IWEF]\d{0,4}|W(?:A(?:R(?:N(?:I(?:N(?:G(?::.*)?)?)?)?)?)?)?)$")


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


def verbose() -> bool:
    """Whether TensorFlow may log (``NAPARI_SCAN_CLASSIFIER_VERBOSE`` set, not 0)."""
    return os.environ.get(VERBOSE_VARIABLE, "0") not in ("", "0")


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ and Python logging unless :func:`verbose`; call before it
    loads (the environment is read once). Settings the user made stay."""
    if verbose():
        return
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    for name in ("tensorflow", "absl", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)


class NativeLogFilter:
    """While active, file descriptor 2 goes through a pipe that drops native log lines
    (:data:`NATIVE_LOG_LINE`) and passes everything else on at once, partial lines included
    (a progress bar's ``\\r`` updates)."""

    def __init__(self) -> None:
        self._saved: int | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> NativeLogFilter:
        sys.stderr.flush()
        self._saved = os.dup(2)
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self._thread = threading.Thread(target=self._pump, args=(read,), daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        sys.stderr.flush()
        os.dup2(self._saved, 2)  # the pipe's last writer closes: the pump reads its end
        self._thread.join(timeout=5)
        os.close(self._saved)

    def _pump(self, read: int) -> None:
        pending = b""
        while chunk := os.read(read, 65536):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if not NATIVE_LOG_LINE.match(line):
                    os.write(self._saved, line + b"\n")
            if pending and not _MAYBE_NATIVE.match(pending) and not NATIVE_LOG_LINE.match(pending):
                os.write(self._saved, pending)  # e.g. a progress bar's "\r 40%|####"
                pending = b""
        if pending and not NATIVE_LOG_LINE.match(pending):
            os.write(self._saved, pending)
        os.close(read)


def isolate_tensorflow() -> None:
    """Arrange for the first ``import tensorflow`` to load it privately (Linux only)."""
    if not sys.platform.startswith("linux") or "tensorflow" in sys.modules:
        return
    if not hasattr(os, "RTLD_DEEPBIND"):
        return
    # TensorFlow forces RTLD_GLOBAL through this module when it exists; None disables it.
    sys.modules.setdefault("tensorflow.python.pywrap_dlopen_global_flags", None)
    sys.meta_path.insert(0, _PrivateTensorFlowFinder())
