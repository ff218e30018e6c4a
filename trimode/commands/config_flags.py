"""Command-line flags generated from a pydantic config model.

A config model declares each setting once: its type, default, bounds
(``Field(ge=..., gt=..., le=..., lt=...)``), choices (``Literal``) and
description. :class:`ConfigFlags` turns those fields into argparse flags and the
parsed arguments back into the model, by one rule:

- field ``max_batch_size`` -> flag ``--max-batch-size``, dest ``max_batch_size``;
- ``int`` / ``float`` (or either or None): parsed as such, the bounds checked as
  the value is parsed, so a bad value is an argument error naming the flag;
  ``Literal``: argparse ``choices``; ``str``: as given;
- ``bool``: a switch (``store_true``) that sets the value its default is not:
  ``--fast`` (default False), ``--no-plots`` (default True; help "do not" + the description);
- ``list[X]`` / ``tuple[X, ...]`` (or either or None): a comma list (``''``: an empty
  one), each item checked as an X (choices, bounds), ``none`` where an item may be None;
- the default is the field's, the help its description plus ``(default: X)``
  (a field whose default is None says in its description what None means);
- a field whose type is itself a model becomes an argument group titled by the
  field's ``title`` (its description below it), whose flags are prefixed with
  the field's name: ``auto.window`` -> ``--auto-window``.

A command states only where its flags depart from the rule, per dotted field
path, with a :class:`Flag` (another name, a parser of its own, a metavar, a flag
the parser already has, or no flag at all). With ``given_only``, a flag left
out is None and :meth:`ConfigFlags.values` returns only the flags given, so a
command can lay them over a preset of its own (``trimode bench --quick``).
Building the parser imports only argparse and pydantic (the model's module too),
never torch.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from ..typed_config import allowed, is_union, sequence_of, unwrap


@dataclass(frozen=True)
class Flag:
    """How one field appears on the command line, where it departs from the rule."""

    name: str | None = None
    """The option string, e.g. ``"--timeout"`` (default: ``--`` + the dashed field path)."""
    type: Callable[[str], Any] | None = None
    """Parses the flag's text (default: from the field's type and bounds). argparse also runs it on a
    string default, so it must accept the field's default when that is a string."""
    metavar: str | None = None
    shared: bool = False
    """The parser already has this flag (one that other commands, or another model, share): read it, do
    not add it. With a ``context``, :class:`ConfigFlags` adds this field's meaning to the flag's help."""
    omit: bool = False
    """No flag: the field keeps its default unless the command passes a value to :meth:`ConfigFlags.build`."""


NO_FLAG = Flag(omit=True)


@dataclass(frozen=True)
class _Option:
    path: str  # dotted field path, e.g. "auto.window"
    option: str  # e.g. "--auto-window"
    dest: str  # attribute of the parsed namespace
    info: FieldInfo
    flag: Flag
    group: str | None  # path of the nested model whose group holds it; None: the parser itself
    switch: bool  # a bool field: a store_true flag that sets the value its default is not


class ConfigFlags:
    """The flags of ``model`` (a pydantic model class), and the model built from parsed flags.

    ``flags`` maps dotted field paths to :class:`Flag` where the rule does not fit (a path that is
    not a field of the model is an error). ``given_only``: every flag defaults to None (a switch to
    False), meaning "not given", and :meth:`values` returns only the flags given; the help still shows
    the field's default. ``context``, e.g. ``"with --forward-costs"``, introduces this model's meaning
    of a shared flag in that flag's help.
    """

    def __init__(self, model: type[BaseModel], flags: Mapping[str, Flag] | None = None, *,
                 given_only: bool = False, context: str | None = None):
        self.model = model
        self.flags = dict(flags or {})
        self.given_only = given_only
        self.context = context
        self.groups: dict[str, FieldInfo] = {}  # nested-model field path -> its field
        self.options: list[_Option] = []
        self._collect(model, prefix="", group=None)
        known = {o.path for o in self.options} | set(self.groups)
        unknown = sorted(set(self.flags) - known)
        if unknown:
            raise ValueError(f"{unknown}: not fields of {model.__name__}")

    def _collect(self, model: type[BaseModel], prefix: str, group: str | None) -> None:
        for name, info in model.model_fields.items():
            path = prefix + name
            flag = self.flags.get(path, Flag())
            nested = _nested_model(info.annotation)
            if nested is not None and not flag.omit:
                self.groups[path] = info
                self._collect(nested, prefix=path + ".", group=path)
                continue
            switch = flag.type is None and _scalar(info.annotation)[0] is bool
            dashed = ("no-" if switch and info.default is True else "") + path.replace(".", "-").replace("_", "-")
            option = flag.name or "--" + dashed
            dest = option.lstrip("-").replace("-", "_")
            self.options.append(_Option(path, option, dest, info, flag, group, switch))

    # ------------------------------------------------------------------ the parser
    def add_to(self, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        """Add the flags (and one argument group per nested model) to ``parser`` (or an argument group)."""
        containers: dict[str | None, Any] = {None: parser}
        for path, info in self.groups.items():
            containers[path] = parser.add_argument_group(info.title or path, info.description)
        for o in self.options:
            if o.flag.shared and self.context:
                action = parser._option_string_actions[o.option]
                action.help = f"{action.help}; {self.context}: {_help(o)}"
            elif not (o.flag.omit or o.flag.shared):
                containers[o.group].add_argument(o.option, **_argument(o, self.given_only))

    # ------------------------------------------------------------------ the config
    def values(self, args: argparse.Namespace) -> dict[str, Any]:
        """The parsed values by dotted field path: every flag's, or with ``given_only`` those given
        (fields without a flag are absent)."""
        found = {}
        for o in (o for o in self.options if not o.flag.omit):
            value = getattr(args, o.dest)
            if o.switch:  # True: given, the field takes the value its default is not
                value = (not o.info.default) if value else None if self.given_only else o.info.default
            if value is not None or not self.given_only:
                found[o.path] = value
        return found

    def given(self, args: argparse.Namespace) -> list[str]:
        """The flags of this model (shared ones aside) that the command line gave (with ``given_only``)."""
        values = self.values(args)
        return [o.option for o in self.options if o.path in values and not o.flag.shared]

    def build(self, values: Mapping[str, Any]) -> BaseModel:
        """The model from values by dotted field path (what :meth:`values` returns, plus any the command
        adds); fields not given keep their defaults. The model checks them (pydantic raises a
        ``ValueError`` naming the field)."""
        nested: dict[str, Any] = {}
        for path, value in values.items():
            *parents, name = path.split(".")
            target = nested
            for parent in parents:
                target = target.setdefault(parent, {})
            target[name] = value
        return self.model(**nested)

    def config(self, args: argparse.Namespace) -> BaseModel:
        """The model the parsed flags describe."""
        return self.build(self.values(args))


def _argument(o: _Option, given_only: bool) -> dict[str, Any]:
    """``add_argument`` keywords of one option."""
    info, flag = o.info, o.flag
    kwargs: dict[str, Any] = {"default": None if given_only else info.get_default(call_default_factory=True),
                              "help": _help(o)}
    if flag.metavar:
        kwargs["metavar"] = flag.metavar
    kind, choices = _scalar(info.annotation)
    items = sequence_of(info.annotation)
    if flag.type is not None:
        kwargs["type"] = flag.type
    elif o.switch:
        kwargs.update(action="store_true", default=False)
    elif items is not None:
        kwargs["type"] = comma_list(_item_parser(items[1]), items[0])
    elif choices:
        kwargs["choices"] = list(choices)
        if not all(isinstance(c, str) for c in choices):
            kwargs["type"] = type(choices[0])
    elif kind in (int, float):
        kwargs["type"] = bounded(kind, info.metadata)
    elif kind is not str:
        raise TypeError(f"{o.path}: no command-line type for {info.annotation!r}; give it Flag(type=...)")
    return kwargs


def _help(o: _Option) -> str:
    """The description, with the default (a comma list for a list); a ``--no-`` switch's: "do not" + it."""
    default = o.info.get_default(call_default_factory=True)
    text = o.info.description or ""
    if o.switch and default is True:
        text = "do not " + text
    elif not o.switch and default is not None:
        shown = (",".join("none" if v is None else str(v) for v in default) or "''"
                 if isinstance(default, (list, tuple)) else default)
        text += f" (default: {shown})"
    return text.replace("%", "%%").strip()


def _scalar(annotation: Any) -> tuple[Any, tuple]:
    """(type, Literal choices) of a field: ``Optional[X]`` is X; anything else must be one type."""
    if is_union(annotation):
        members = [a for a in get_args(annotation) if a is not type(None)]
        return _scalar(members[0]) if len(members) == 1 else (None, ())
    if get_origin(annotation) is Literal:
        return None, get_args(annotation)
    return annotation, ()


def _item_parser(annotation: Any, constraints=()) -> Callable[[str], Any]:
    """Parses one item of a comma list: ``none`` where the item may be None, a choice, a bounded number, text."""
    if is_union(annotation):
        (member,) = [a for a in get_args(annotation) if a is not type(None)]
        inner = _item_parser(member, constraints)
        return lambda text: None if text.lower() == "none" else inner(text)
    inner, found = unwrap(annotation)  # Annotated[X, Field(ge=1)]: X with those bounds
    if inner is not annotation:
        return _item_parser(inner, [*constraints, *found])
    if get_origin(annotation) is Literal:
        choices = {str(c): c for c in get_args(annotation)}

        def choice(text: str):
            if text not in choices:
                raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(choices)}")
            return choices[text]

        return choice
    if annotation in (int, float):
        return bounded(annotation, constraints)
    if annotation is str:
        return str
    raise TypeError(f"no command-line type for list items of type {annotation!r}")


def comma_list(item: Callable[[str], Any], container: type = list) -> Callable[[str], Any]:
    """An argparse type: comma-separated ``item`` values ('' = none), as a ``container``."""

    def parse(text: str):
        return container(item(t.strip()) for t in text.split(",") if t.strip())

    return parse


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


_LIMITS = {"ge": (">=", lambda v, x: v >= x), "gt": (">", lambda v, x: v > x),
           "le": ("<=", lambda v, x: v <= x), "lt": ("<", lambda v, x: v < x)}


def bounded(kind: type, constraints) -> Callable[[str], Any]:
    """An argparse type: ``kind`` (int or float) within the ``ge`` / ``gt`` / ``le`` / ``lt``
    limits among ``constraints`` (a field's metadata). NaN is refused by any limit."""
    limits = [(k, getattr(c, k)) for c in constraints for k in _LIMITS if getattr(c, k, None) is not None]
    what = allowed(kind)  # "an integer", "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        for k, limit in limits:
            symbol, ok = _LIMITS[k]
            if not ok(value, limit):
                raise argparse.ArgumentTypeError(f"{value} must be {symbol} {limit}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some errors
    return parse
