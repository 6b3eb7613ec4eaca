"""Options declared once: a configuration dataclass's field carries its default, help text, paper section
and the values it accepts, and the command line's options and positional arguments, their checks and the
configuration a run saves are all made from it."""

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Sequence

from .errors import InputError


@dataclasses.dataclass(frozen=True)
class Accepts:
    """The values an option accepts: a test, and how to say it."""

    what: str
    test: Callable[[float], bool]

    def check(self, flag: str, value: object) -> None:
        """Raise InputError, naming the option, when `value` is not accepted (None always is: a default)."""
        if value is not None and not self.test(value):
            raise InputError(f"{flag} {value}: expected {self.what}")


COUNT = Accepts("a whole number of at least 1", lambda v: v >= 1)
SIZE = Accepts("a whole number of at least 0", lambda v: v >= 0)
RATE = Accepts("a finite number above 0", lambda v: math.isfinite(v) and v > 0)
AMOUNT = Accepts("a finite number of at least 0", lambda v: math.isfinite(v) and v >= 0)
PORT = Accepts("a port number from 1 to 65535", lambda v: 1 <= v <= 65535)
FRACTION = Accepts("a number from 0 up to, not including, 1", lambda v: 0 <= v < 1)
SEED = Accepts("a whole number from 0 to 2^63 - 1", lambda v: 0 <= v < 2**63)  # what torch's generators take


def up_to(most: int) -> Accepts:
    """A whole number from 1 to `most`: a count whose work or memory grows with it."""
    return Accepts(f"a whole number from 1 to {most}", lambda v: 1 <= v <= most)


class Parser(argparse.ArgumentParser):
    """argparse's parser, but a mistake on the command line is one line (and exit status 2), not the usage."""

    def error(self, message: str) -> typing.NoReturn:
        """Exit with `PROG: error: MESSAGE (see PROG --help)`."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def option(default: object, help: str, *, section: str = "", choices: Sequence | None = None,
           accepts: Accepts | None = None, parse: Callable[[str], object] | None = None,
           metavar: str | None = None, required: bool = False, resume: bool = False) -> dataclasses.Field:
    """A configuration field and its command-line option: `--name-with-dashes`, a switch for a bool.
    `resume`: a resumed run may change it (see `resume_rules`)."""
    meta = {"help": help, "section": section, "choices": choices, "accepts": accepts, "parse": parse,
            "metavar": metavar, "required": required, "resume": resume}
    return dataclasses.field(default=default, metadata=meta)


def argument(help: str, *, nargs: str | None = None, choices: Sequence | None = None,
             metavar: str | None = None) -> dataclasses.Field:
    """A required configuration field and its positional argument on the command line (`nargs="+"`: one or
    more, a list)."""
    meta = {"help": help, "section": "", "choices": choices, "accepts": None, "parse": None, "metavar": metavar,
            "required": True, "resume": False, "positional": True, "nargs": nargs}
    return dataclasses.field(metadata=meta)


def png(name: str) -> str:
    """A picture's file name, which must say what it holds: .png (an option's `parse`)."""
    if not name.lower().endswith(".png"):
        raise argparse.ArgumentTypeError(f"expected a file name ending in .png (pictures are PNG), got {name}")
    return name


def flag(name: str) -> str:
    """The command-line option of a field: --batch-size for batch_size."""
    return "--" + name.replace("_", "-")


def switch(field: dataclasses.Field, default: object) -> str:
    """The option of a bool field: --compile turns a False default on, --no-progress a True default off."""
    return flag(field.name) if not default else "--no-" + flag(field.name)[2:]


def _value_type(annotation: object) -> type:
    """int for `int | None`, str for `str`, and so on."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation  # type: ignore[return-value]


def checked(parse: Callable[[str], object], accepts: Accepts | None) -> Callable[[str], object]:
    """A type for argparse: parse the text, then check the value."""
    def convert(text: str) -> object:
        value = parse(text)
        if accepts is not None and value is not None and not accepts.test(value):
            raise argparse.ArgumentTypeError(f"expected {accepts.what}, got {text}")
        return value

    convert.__name__ = getattr(parse, "__name__", "value")  # what argparse names in "invalid int value"
    return convert


def add_options(parser: argparse.ArgumentParser, config: type, defaults: dict | None = None) -> None:
    """An option, or a positional argument, for every declared field of the dataclass `config` (`defaults`
    overrides some defaults)."""
    hints = typing.get_type_hints(config)
    for field in dataclasses.fields(config):
        meta = field.metadata
        if "help" not in meta:
            continue
        default = (defaults or {}).get(field.name, field.default)
        text = f"{meta['section']}: {meta['help']}" if meta["section"] else meta["help"]
        if meta.get("positional"):
            parser.add_argument(field.name, nargs=meta["nargs"], choices=meta["choices"], metavar=meta["metavar"],
                                help=text)
            continue
        kind = _value_type(hints[field.name])
        if kind is bool:  # a switch that turns the default around
            parser.add_argument(switch(field, default), dest=field.name,
                                action="store_false" if default else "store_true", help=text)
            continue
        parser.add_argument(flag(field.name), type=checked(meta["parse"] or kind, meta["accepts"]),
                            default=argparse.SUPPRESS if meta["required"] else default, choices=meta["choices"],
                            metavar=meta["metavar"], required=meta["required"], help=text)


def check(config: object) -> None:
    """Raise InputError, naming the option, for the first field whose value its declaration does not accept."""
    for field in dataclasses.fields(config):
        accepts = field.metadata.get("accepts")
        if accepts is not None:
            accepts.check(flag(field.name), getattr(config, field.name))


def from_args(config: type, args: argparse.Namespace, **values: object) -> object:
    """The dataclass `config` filled from parsed arguments (and `values`, for fields without an option)."""
    names = {f.name for f in dataclasses.fields(config)}
    return config(**{k: v for k, v in vars(args).items() if k in names}, **values)


def resume_rules(config: type) -> str:
    """The options a resumed run may change, as a sentence for --help."""
    free = [switch(f, f.default) if isinstance(f.default, bool) else flag(f.name)
            for f in dataclasses.fields(config) if f.metadata.get("resume")]
    return (f"With --resume, a run keeps its own configuration; it may change {', '.join(free)}. Any other "
            "option given with another value than the run's is an error.")


def resumed(config: object, saved: object) -> object:
    """The configuration `saved` of a run with the changes that `config` (a resume's) may make; an option that
    `config` sets to a value other than its default and the run's own, and may not change, is an InputError."""
    changes = {}
    for field in dataclasses.fields(config):
        if "help" not in field.metadata or field.name == "resume":
            continue
        mine, theirs = getattr(config, field.name), getattr(saved, field.name)
        if field.metadata["resume"]:
            changes[field.name] = theirs if mine == field.default else mine
        elif mine != field.default and mine != theirs:
            has = "it unset (its default)" if theirs is None else repr(theirs)
            raise InputError(f"{flag(field.name)} {mine}: the run to resume has {has}, and a resumed run keeps it "
                             "(see --help)")
    return dataclasses.replace(saved, resume=config.resume, **changes)
