"""Options declared once: a configuration dataclass's field carries its default, help text and paper
section, and both the command line's options and the configuration a run saves are made from it."""

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Sequence


def option(default: object, help: str, *, section: str = "", choices: Sequence | None = None,
           parse: Callable[[str], object] | None = None, metavar: str | None = None,
           required: bool = False) -> dataclasses.Field:
    """A configuration field and its command-line option: `--name-with-dashes`, a switch for a bool."""
    meta = {"help": help, "section": section, "choices": choices, "parse": parse, "metavar": metavar,
            "required": required}
    return dataclasses.field(default=default, metadata=meta)


def _value_type(annotation: object) -> type:
    """int for `int | None`, str for `str`, and so on."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation  # type: ignore[return-value]


def add_options(parser: argparse.ArgumentParser, config: type, defaults: dict | None = None) -> None:
    """An option for every declared field of the dataclass `config` (`defaults` overrides some defaults)."""
    hints = typing.get_type_hints(config)
    for field in dataclasses.fields(config):
        meta = field.metadata
        if "help" not in meta:
            continue
        default = (defaults or {}).get(field.name, field.default)
        text = f"{meta['section']}: {meta['help']}" if meta["section"] else meta["help"]
        flag = "--" + field.name.replace("_", "-")
        kind = _value_type(hints[field.name])
        if kind is bool:  # a switch that turns the default around
            flag = flag if not default else "--no-" + flag[2:]
            parser.add_argument(flag, dest=field.name, action="store_false" if default else "store_true",
                                help=text)
            continue
        parser.add_argument(flag, type=meta["parse"] or kind, default=argparse.SUPPRESS if meta["required"]
                            else default, choices=meta["choices"], metavar=meta["metavar"], required=meta["required"],
                            help=text)


def from_args(config: type, args: argparse.Namespace, **values: object) -> object:
    """The dataclass `config` filled from parsed arguments (and `values`, for fields without an option)."""
    names = {f.name for f in dataclasses.fields(config)}
    return config(**{k: v for k, v in vars(args).items() if k in names}, **values)
