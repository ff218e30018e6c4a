"""How the training configs read to a user: a field's type in ``--help``, a validation error as one line.

:mod:`trimode.training.config` declares each setting once, as a pydantic field (type, default,
bounds). The messages here are derived from those declarations, so an error names the key, the
value and what is allowed (``lr=-1.0 must be > 0``, ``code_replay=1.0 must be in [0, 1)``,
``precision='fp16' is not one of fp32, bf16``) rather than pydantic's multi-line report.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ValidationError

BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def type_name(tp: Any) -> str:
    """A field's type as ``--help`` shows it: ``int``, ``int | None``, ``list[str]`` (a Literal as its values' type)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return type(args[0]).__name__
    if origin in (list, Annotated):  # list[AtLeast1] shows as list[int]
        return f"list[{type_name(args[0])}]" if origin is list else type_name(args[0])
    return getattr(tp, "__name__", str(tp))  # int | None has no __name__; its str reads the same


def describe(error: ValidationError, cls: type[BaseModel], data: Any) -> str:
    """The problems of ``cls.model_validate(data)``, one clause each, naming the (dotted) key and what is allowed."""
    found = []
    for err in error.errors():
        keys = [k for k in err["loc"] if isinstance(k, str)]  # the field path, without list indices
        key = ".".join(keys)
        if err["type"] == "extra_forbidden":
            found.append(f"unknown keys {[key]}")
        elif err["type"] == "value_error":  # a rule of a (nested) config: its message names fields relative to it
            found.append(f"{key}.{err['ctx']['error']}" if key else str(err["ctx"]["error"]))
        else:
            owner, value = cls, data
            for k in keys:
                field = owner.model_fields[k]
                owner, value = field.annotation, value[k] if isinstance(value, dict) else getattr(value, k)
            found.append(explain(err, key, field.annotation, field.metadata, value) or f"{key}={value!r}: {err['msg']}")
    return "; ".join(dict.fromkeys(found))


def explain(err: dict, key: str, tp: Any, metadata: list, value: Any) -> str | None:
    """A choice, bound or length error as ``key=value must ...``, from the field's type ``tp`` and bounds
    ``metadata`` (an error at a list index is about one item, whose bounds are on the item type); None for
    other errors (a wrong type: pydantic's message says enough)."""
    item = bool(err["loc"]) and isinstance(err["loc"][-1], int)
    if err["type"] == "literal_error":
        allowed = typing.get_args(typing.get_args(tp)[0] if item else tp)
        if item:
            bad = ", ".join(v for v in value if v not in allowed)
            return f"{key}={value!r}: unknown {bad}; allowed: {', '.join(allowed)}"
        return f"{key}={value!r} is not one of {', '.join(allowed)}"
    if err["type"] in ("too_short", "too_long"):
        short = err["type"] == "too_short"
        n = err["ctx"]["min_length" if short else "max_length"]
        return f"{key}={value!r} must have {'at least' if short else 'at most'} {n} item{'s' * (n != 1)}"
    if item:
        metadata = [m for arg in typing.get_args(typing.get_args(tp)[0])[1:] for m in getattr(arg, "metadata", [arg])]
    bounds = [(op, getattr(m, op)) for op in BOUNDS for m in metadata if getattr(m, op, None) is not None]
    if not bounds or not err["type"].startswith(("greater_than", "less_than")):
        return None
    if len(bounds) == 2:  # a range: [0, 1), (0, 1), [0, 64]
        (low, a), (high, b) = bounds
        bound = f"in {'(' if low == 'gt' else '['}{a}, {b}{')' if high == 'lt' else ']'}"
    else:
        bound = f"{BOUNDS[bounds[0][0]]} {bounds[0][1]}"
    optional = " or none" if type(None) in typing.get_args(tp) else ""
    return f"{key}={value!r} must {'all be' if item else 'be'} {bound}{optional}"
