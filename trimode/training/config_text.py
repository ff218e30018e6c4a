"""How the training configs read in ``trimode train --help``: a field's type name.

A validation error is worded by :mod:`trimode.typed_config`, as every config's errors are
(``lr=-1.0 must be a number > 0``, ``code_replay=1.0 must be a number in [0, 1)``).
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, Literal


def type_name(tp: Any) -> str:
    """A field's type as ``--help`` shows it: ``int``, ``int | None``, ``list[str]`` (a Literal as its values' type)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return type(args[0]).__name__
    if origin in (list, Annotated):  # list[AtLeast1] shows as list[int]
        return f"list[{type_name(args[0])}]" if origin is list else type_name(args[0])
    return getattr(tp, "__name__", str(tp))  # int | None has no __name__; its str reads the same
