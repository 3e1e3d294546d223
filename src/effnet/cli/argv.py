"""The command line before Hydra reads it: `~` in values, and flags Hydra does not know.

`~`: a shell expands it only at the start of a word, or after the `=` of a word that is a
variable assignment. `data.root=~/photos` is no assignment (the name has a dot), and zsh does
not expand after `=` by default at all, so the `~` reaches Python as typed. Hydra's override
grammar has no unquoted `~` in a value, so it stops with a lexer error. Where the grammar would
reject it anyway, a `~` can only mean a home folder, so it is expanded here for every key:
`data.root`, `ckpt`, `ckpt_path`, `inputs`, `out`, `model.weights` and any key added later.
(Bash does expand `ckpt=~/run`, a valid variable name; that arrives as an absolute path.)

Flags: argparse reports an unknown flag as a usage block and an error line; here it is one line,
like every other mistake on the command line. And it takes overrides only from before or after
the flags, not both (`data.root=x -m lr=1,2`); they are put after them here.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from collections.abc import Collection, Sequence
from pathlib import Path

from effnet.errors import UserError

# A home-folder prefix where an element of a value starts: the value itself, an item of a sweep
# (a,b), a list ([a,b]) or a sweep function's argument (choice(a,b)).
_HOME = re.compile(r"(^|[,\[(])(~[^/,\[\]()]*)")


def expand_home(value: str) -> str:
    """`~` and `~user` at the start of each element of an override's value, as a shell would."""
    return _HOME.sub(lambda m: m.group(1) + os.path.expanduser(m.group(2)), value)


def expand_overrides(args: Sequence[str]) -> list[str]:
    """The arguments with `~` expanded in the values of `key=value` overrides (flags untouched;
    a leading `~` in the key is Hydra's delete and stays)."""
    out = []
    for arg in args:
        key, eq, value = arg.partition("=")
        out.append(arg if arg.startswith("-") or not eq else key + eq + expand_home(value))
    return out


def command_words(argv0: str, keep_path: bool = False) -> list[str]:
    """How to type this command again, for a line the user copies (a resume line, the dry run's
    `start it`): `python train.py` for an entry script (its path as typed, with `keep_path`), and
    for an installed console script its name (`effnet-train`), or its path where that name on PATH
    finds another program or none."""
    path = Path(argv0)
    if path.suffix == ".py" or not path.is_file():
        return ["python", argv0 if keep_path else path.name]
    found = shutil.which(path.name)
    return [path.name if found and Path(found).resolve() == path.resolve() else argv0]


def order_flags(args: Sequence[str], script: str) -> list[str]:
    """The arguments with Hydra's flags first and the overrides after them, so `data.root=x -m
    lr=1,2` works as `-m data.root=x lr=1,2` does (argparse takes positionals from one place
    only); UserError for a flag or flag value that Hydra's own argument parser rejects."""
    try:
        from hydra._internal.utils import get_args_parser  # the parser hydra.main uses
    except ImportError:  # a Hydra without it: argparse's own message still ends the run
        return list(args)
    parser = get_args_parser()

    def error(message: str) -> None:
        raise UserError(
            f"{message}; see {shlex.join(command_words(script))} --help (settings are key=value, e.g. lr=1e-3)"
        )

    parser.error = error  # argparse would print its usage block and exit
    parsed, unknown = parser.parse_known_intermixed_args(list(args))
    if unknown:
        error(f"unknown option {' '.join(unknown)}")
    overrides = list(parsed.overrides or [])
    flags, pending = [], list(overrides)
    for arg in args:
        if pending and arg == pending[0]:
            pending.pop(0)
        else:
            flags.append(arg)
    return flags + overrides


def repeated_choices(overrides: Sequence[str], groups: Collection[str]) -> list[str]:
    """A line for each config group chosen twice (`preset=small preset=large`): Hydra keeps the last
    without a word, and with it a whole set of values, so the run is not the one half of the
    command line asks for. Said, not refused: a tool that appends its settings to a command (the
    README's harness, a wrapper script) overrides a choice the same way. `groups`: the config groups
    (Hydra's runtime.choices); a plain value given twice is Hydra's ordinary last-wins."""
    seen: dict[str, str] = {}
    notes = []
    for override in overrides:
        key, eq, value = override.lstrip("+").partition("=")
        if override.startswith("~") or not eq or key not in groups:
            continue
        if key in seen:
            notes.append(f"{key} is given twice ({seen[key]}, then {override}): the last wins, {key}={value}")
        seen[key] = override
    return notes


def prepare(args: Sequence[str], script: str) -> list[str]:
    """The arguments Hydra should parse; UserError for an unknown flag."""
    return expand_overrides(order_flags(args, script))
