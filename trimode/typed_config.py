"""Typed configs and their one-line errors: the one implementation every package of trimode uses.

A config declares each setting once, as a pydantic field: its type, default, bounds
(``Field(ge=..., gt=..., le=..., lt=...)``, ``min_length``/``max_length`` of a list), choices
(``Literal``) and description. A bad value raises :class:`ConfigError`, a ``ValueError`` whose
message is one line, one clause per bad field, derived from those declarations::

    port=70000 must be an integer in [0, 65535]
    threshold=1.5 must be a number in (0, 1], 'model' or None
    log_level='loud' must be one of 'critical', 'error', 'warning'
    modes=[] must be a non-empty list, each item one of 'ar', 'diffusion'
    auto.window=0 must be an integer >= 1             (a nested config's field: its dotted path)
    auto: min_samples=8 must be <= window=4           (a rule between the fields of a nested config)
    mdoe='ar': ServerConfig has no such setting

- :class:`CheckedConfig`: base of the pydantic models (strict, unknown fields refused; a subclass may
  turn on ``validate_assignment``, and a refused assignment then changes nothing).
- :func:`one_line_errors`: the same errors for a pydantic dataclass (a config built positionally
  or with ``dataclasses.replace``).
- :func:`allowed`, :func:`must_be`: the wording of what a type allows, for messages written elsewhere.

Only pydantic and the standard library are imported: the command line builds its parsers from the
configs without importing torch.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo


class ConfigError(ValueError):
    """A setting that is not allowed; ``errors`` holds pydantic's structured errors."""

    def __init__(self, message: str, errors: list[dict] | None = None):
        super().__init__(message)
        self.errors = errors or []


_UNSET = object()


class CheckedConfig(BaseModel):
    """Base of the configs: strict (``"8"`` is not an integer), unknown fields refused, every failure
    raised as one :class:`ConfigError` line (see :func:`describe_errors`), after ``error_prefix``.

    A subclass may set ``model_config = ConfigDict(validate_assignment=True)``: a refused assignment
    then raises and changes nothing. Otherwise :meth:`validate` checks assigned fields."""

    model_config = ConfigDict(strict=True, extra="forbid")
    error_prefix: ClassVar[str] = ""
    """Put before every message, e.g. ``"train config: "``."""

    def __init__(self, **values: Any):
        try:
            super().__init__(**values)
        except ValidationError as e:
            raise config_error(type(self), e, values) from None

    def __setattr__(self, name: str, value: Any) -> None:
        before = self.__dict__.get(name, _UNSET)
        try:
            super().__setattr__(name, value)
        except ValidationError as e:
            if before is not _UNSET:  # a cross-field rule fails after pydantic stored the value: undo it
                self.__dict__[name] = before
            raise config_error(type(self), e, {name: value}) from None

    def validate(self):  # type: ignore[override]  (pydantic v1's classmethod of that name)
        """Check the whole config again, nested configs included (an error names its dotted path);
        returns ``self``. For fields assigned since it was built, or a config put together some other
        way (``model_construct``, ``model_copy(update=...)``)."""
        type(self)(**_field_values(self))
        return self


def _field_values(config: CheckedConfig) -> dict[str, Any]:
    """The fields of ``config``, nested configs as dicts (so that they are checked again too)."""
    values = {name: getattr(config, name) for name in type(config).model_fields}
    return {name: _field_values(v) if isinstance(v, CheckedConfig) else v for name, v in values.items()}


def config_error(cls: type, error: ValidationError, values: Mapping[str, Any], label: str | None = None
                 ) -> ConfigError:
    """The :class:`ConfigError` of ``error``, raised building ``cls`` from ``values``."""
    prefix = getattr(cls, "error_prefix", "") if label is None else label
    errors = _flat(cls, error.errors())
    return ConfigError(prefix + describe_errors(cls, errors, values), errors)


def one_line_errors(label: str = ""):
    """Class decorator of a pydantic dataclass: a bad value raises a :class:`ConfigError`,
    ``<label>field=value must be <what is allowed>`` (worded as :func:`describe_errors` words it),
    not pydantic's multi-line report. A positional argument is named by its field."""

    def decorate(cls):
        init = cls.__init__
        names = list(cls.__pydantic_fields__)

        @functools.wraps(init)
        def __init__(self, *args, **kwargs):
            try:
                init(self, *args, **kwargs)
            except ValidationError as e:
                raise config_error(cls, e, {**dict(zip(names, args)), **kwargs}, label) from None

        cls.__init__ = __init__
        return cls

    return decorate


# ------------------------------------------------------------------------------- error messages
_UNKNOWN = ("extra_forbidden", "unexpected_keyword_argument", "unexpected_positional_argument")


def describe_errors(cls: type, errors: list[dict], values: Mapping[str, Any] | None = None) -> str:
    """pydantic's errors of building ``cls`` (a model or a pydantic dataclass) from ``values`` as one
    line: ``field=value must be <what the field allows>`` per bad field (a union's members' errors,
    and a list's items' errors, merged into one), or the message of a rule between fields (after the
    path of the nested config whose rule it is)."""
    lines: dict[str, str] = {}
    for err in _flat(cls, errors):
        loc = _named(cls, err.get("loc", ()))
        path, info, value = _field_at(cls, loc, values or {}, err.get("input"))
        if err["type"] in _UNKNOWN:
            name = ".".join(loc) or "value"
            key, text = name, f"{name}={_shown(err['input'])}: {cls.__name__} has no such setting"
        elif err["type"] == "value_error" or info is None:  # a rule between fields (a model validator)
            message = err["msg"].removeprefix("Value error, ")
            key = text = f"{path}: {message}" if path else message
        else:
            key, text = path, must_be(path, value, info.annotation, info.metadata)
        lines.setdefault(key, text)
    return "; ".join(lines.values())


def _flat(cls: type, errors: list[dict]) -> list[dict]:
    """``errors`` with a nested config's :class:`ConfigError` (pydantic validates a nested config by its
    ``__init__``, and reports what that raises as one error of the field) replaced by the nested errors,
    located from ``cls``: ``("auto", "window")``, so that they are named by their dotted path."""
    flat = []
    for err in errors:
        nested, loc = (err.get("ctx") or {}).get("error"), _named(cls, err.get("loc", ()))
        path, info, _ = _field_at(cls, loc, {}, None)
        if isinstance(nested, ConfigError) and loc and path == ".".join(loc) and _fields_of(info.annotation):
            flat += [{**e, "loc": (*err["loc"], *e.get("loc", ()))} for e in nested.errors]
        else:
            flat.append(err)
    return flat


def _named(cls: type, loc: tuple) -> tuple[str, ...]:
    """``loc`` with a positional argument's index (a dataclass built positionally) as its field's name."""
    if not loc:
        return ()
    names = list(_fields_of(cls) or ())
    head, *rest = loc
    if isinstance(head, int):
        head = names[head] if head < len(names) else f"argument {head + 1}"
    return (head, *(str(part) for part in rest))


def _fields_of(tp: Any) -> dict[str, FieldInfo] | None:
    """The fields of a pydantic model or dataclass; None for any other type."""
    fields = getattr(tp, "__pydantic_fields__", None) if isinstance(tp, type) else None
    return fields if isinstance(fields, dict) else None


def _field_at(cls: type, loc: tuple, values: Any, error_input: Any) -> tuple[str, FieldInfo | None, Any]:
    """The dotted field path of an error's ``loc``, that field and its value in ``values`` (the whole
    list for an error of one item; the error's input where ``values`` lacks it). pydantic adds union
    members' tags (``"constrained-float"``, ``"literal['model']"``) and list indices after the field:
    not part of the path."""
    names: list[str] = []
    info = None
    current: Any = cls
    value: Any = values
    for part in loc:
        fields = _fields_of(current)
        if fields is None or part not in fields:
            break
        names.append(part)
        info, current = fields[part], fields[part].annotation
        value = value.get(part, _UNSET) if isinstance(value, Mapping) else getattr(value, part, _UNSET)
    if not names or value is _UNSET:
        value = error_input
    return ".".join(names), info, value


def must_be(name: str, value: Any, annotation: Any, constraints: list | tuple = ()) -> str:
    """``name=value must be <what annotation (with constraints) allows>``, e.g. ``lr=-1.0 must be a number > 0``."""
    return f"{name}={_shown(value)} must be {allowed(annotation, constraints)}"


def allowed(annotation: Any, constraints: list | tuple = ()) -> str:
    """What a field of type ``annotation`` (with ``constraints``: annotated_types' Ge / Gt / Le / Lt,
    MinLen / MaxLen) accepts, in words: ``an integer >= 1``, ``a number in (0, 1], 'model' or None``,
    ``one of 'a', 'b'``, ``true or false``, ``a non-empty list, each item an integer >= 1``."""
    return _or(_alternatives(annotation, list(constraints)))


def _alternatives(annotation: Any, constraints: list) -> list[str]:
    if is_union(annotation):  # a field's bounds (Optional[int] = Field(ge=1)) bind its members
        members = get_args(annotation)
        if len(members) == 2 and type(None) in members and sequence_of(annotation):  # Optional[list[X]]
            return [_sequence(annotation, constraints)]
        return [word for member in members for word in _alternatives(member, constraints)]
    inner, found = unwrap(annotation)
    if inner is not annotation:
        return _alternatives(inner, [*constraints, *found])
    if get_origin(annotation) in (list, tuple):
        return [_sequence(annotation, constraints)]
    if get_origin(annotation) is Literal:
        choices = [repr(c) for c in get_args(annotation)]
        return [choices[0] if len(choices) == 1 else "one of " + ", ".join(choices)]
    if annotation is type(None):
        return ["None"]
    if annotation is bool:
        return ["true", "false"]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        name = annotation.__name__
        return [f"{'an' if name[0] in 'AEIOU' else 'a'} {name}"]
    noun = {int: "an integer", float: "a number", str: "a string"}.get(
        annotation, getattr(annotation, "__name__", str(annotation)))
    return [noun + _bounds(constraints)]


def _sequence(annotation: Any, constraints: list) -> str:
    """A list (or tuple) field's words: its size, whether it may be None, what each item may be."""
    _, item = sequence_of(annotation)
    low = max((getattr(c, "min_length", None) or 0 for c in constraints), default=0)
    high = min((c.max_length for c in constraints if getattr(c, "max_length", None) is not None), default=None)
    if high is None:
        size = "a list" if not low else "a non-empty list" if low == 1 else f"a list of at least {low} items"
    else:
        size = f"a list of {low} items" if low == high else (f"a list of {low} to {high} items" if low
                                                             else f"a list of at most {high} items")
    none = " (or None)" if is_union(annotation) and type(None) in get_args(annotation) else ""
    return f"{size}{none}, each item {allowed(item)}"


def _bounds(constraints) -> str:
    """The ``ge`` / ``gt`` / ``le`` / ``lt`` limits among a field's constraints, in words."""
    b = {k: getattr(c, k) for c in constraints for k in ("ge", "gt", "le", "lt") if getattr(c, k, None) is not None}
    low = ("[", b["ge"]) if "ge" in b else ("(", b["gt"]) if "gt" in b else None
    high = (b["le"], "]") if "le" in b else (b["lt"], ")") if "lt" in b else None
    if low and high:
        return f" in {low[0]}{low[1]}, {high[0]}{high[1]}"
    if low:
        return f" {'>=' if low[0] == '[' else '>'} {low[1]}"
    if high:
        return f" {'<=' if high[1] == ']' else '<'} {high[0]}"
    return ""


def _or(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ------------------------------------------------------------------------------- reading types
def is_union(annotation: Any) -> bool:
    """``X | Y`` or ``Union[X, Y]`` (``Optional[X]`` included)."""
    return get_origin(annotation) in (Union, types.UnionType)


def unwrap(annotation: Any) -> tuple[Any, list]:
    """``Annotated[X, ...]`` -> X and its constraints (a ``Field(ge=1)`` among them gives its metadata);
    any other annotation -> itself and no constraints."""
    if get_origin(annotation) is not Annotated:
        return annotation, []
    inner, *extra = get_args(annotation)
    return inner, [c for e in extra for c in (e.metadata if isinstance(e, FieldInfo) else [e])]


def sequence_of(annotation: Any) -> tuple[type, Any] | None:
    """(list or tuple, the item type) of a ``list[X]`` / ``tuple[X, ...]`` annotation (or one that may
    be None); None for any other."""
    for a in get_args(annotation) if is_union(annotation) else (annotation,):
        if get_origin(a) in (list, tuple):
            return get_origin(a), get_args(a)[0]
    return None
