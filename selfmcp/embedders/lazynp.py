"""numpy, imported on first use, so that its import (~40-100 ms) stays off the server's start-up path.

    from selfmcp.embedders.lazynp import np

`np` stands for the numpy module: the first attribute read (`np.zeros`) imports numpy; every
attribute read is then kept on the stand-in, so later reads cost what a module attribute costs.
The server answers `initialize` and `tools/list` before anything reads an attribute: the
keyword index is built and the model loaded in background threads (selfmcp/search.py), and
annotations (`np.ndarray`) are strings, never evaluated. `numpy_imported()` tells a test whether
that still holds.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any


class _LazyNumpy:
    """A stand-in for the numpy module that imports it on the first attribute read."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # copy/pickle/inspect probing the stand-in itself
            raise AttributeError(name)
        value = getattr(importlib.import_module("numpy"), name)
        setattr(self, name, value)  # found in the instance from now on: __getattr__ is not called again
        return value

    def __repr__(self) -> str:
        return f"<numpy, {'imported' if numpy_imported() else 'imported on first use'}>"


def numpy_imported() -> bool:
    return "numpy" in sys.modules


np: Any = _LazyNumpy()
