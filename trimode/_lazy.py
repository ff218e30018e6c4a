"""Lazy package exports (PEP 562), so that importing a package costs nothing until a name is used.

The command line builds its parsers from trimode's packages without importing torch or
transformers (seconds); a package that re-exports torch-backed names lists them here
instead of importing them.
"""

from __future__ import annotations

import importlib
from typing import Callable


def lazy_exports(package: str, namespace: dict, exports: dict[str, str]) -> tuple[Callable, Callable]:
    """``__getattr__`` and ``__dir__`` for ``package``: each name in ``exports`` (name ->
    relative submodule) is imported from its submodule on first use and then cached in
    ``namespace`` (the package's ``globals()``)."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
