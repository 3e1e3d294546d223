"""Errors a user can fix, and how any exception becomes the one line they read.

Config and data mistakes must not end in a traceback: the user needs the key, the value and the
fix. Everything that is not recognised here is a real bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import sys
import traceback
import warnings
from collections.abc import Iterator
from typing import NoReturn

# The user's own HYDRA_FULL_ERROR, kept here because effnet sets Hydra's to 1 (to see exceptions
# itself) and every process it starts (DDP ranks) inherits that.
FULL_ERROR_ENV = "EFFNET_FULL_ERROR"


class UserError(Exception):
    """A problem the user can fix from the command line; printed as one line, exit status 2."""


class RankFailed(Exception):
    """Another DDP rank failed first (effnet.training.ranks): this rank's own error is only the
    consequence. One line naming that rank's error; exit status 1, or a failed job in a sweep."""


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _unknown_option(exc) -> str:
    group, _, option = exc.missing_cfg_file.rpartition("/")
    options = ", ".join(sorted(o for o in exc.options or [] if not o.startswith("_")))
    if not group:
        return f"config '{option}' not found"
    return f"{group}={option}: unknown option; choose one of: {options}"


def _unknown_key(exc, override: str) -> str:
    key = str(getattr(exc, "full_key", "") or getattr(exc, "key", ""))
    parent = getattr(exc, "parent_node", None)
    known = [str(k) for k in parent] if parent is not None and hasattr(parent, "keys") else []
    leaf = key.rpartition(".")[2]
    close = difflib.get_close_matches(leaf, known, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"known keys here: {', '.join(sorted(known))}"
    from effnet.cli.schema import open_hint  # here: effnet.cli.schema imports this module

    add = open_hint(key)  # `+` adds only what something reads: a Lightning or logger argument
    return f"unknown key '{key}' ({hint})" + (f"; {add}{override}" if add else "")


def keep_full_error_choice() -> None:
    """Remember whether the user asked for tracebacks, before Hydra's variable is taken over."""
    os.environ.setdefault(FULL_ERROR_ENV, "1" if os.environ.get("HYDRA_FULL_ERROR") == "1" else "0")


def wants_traceback() -> bool:
    return os.environ.get(FULL_ERROR_ENV, os.environ.get("HYDRA_FULL_ERROR", "0")) == "1"


@contextlib.contextmanager
def held_warnings() -> Iterator[None]:
    """Hold back the warnings raised inside (torch's about a pickle, Pillow's about a file,
    Lightning's about a setting) so that none precedes effnet's own line. They are shown when the
    block succeeds, or before a bug's traceback (or with HYDRA_FULL_ERROR=1), and dropped when it
    ends in a mistake the user can fix: then the one line says what matters. For the checks and
    setup before a command's real work, not for hours of training."""
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            yield
    except Exception as exc:
        if one_line(exc) is None or wants_traceback():
            _replay(caught)
        raise
    except SystemExit as exc:
        if exc.code in (0, None) or wants_traceback():  # a stop has said its line: nothing after it
            _replay(caught)
        raise
    except BaseException:
        _replay(caught)
        raise
    _replay(caught)


def _replay(caught: list[warnings.WarningMessage]) -> None:
    for w in caught:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)


def exit_for(exc: BaseException, bugs_exit: bool = False) -> NoReturn:
    """The end of a run that raised `exc`: a mistake the user can fix is one line and status 2
    (with HYDRA_FULL_ERROR=1 its traceback first); a bug is re-raised, or with `bugs_exit` (where
    a raise would be swallowed, as in a Hydra callback) printed with its traceback, status 1."""
    message = one_line(exc)
    if message is None:
        if not bugs_exit:
            raise exc
        traceback.print_exception(exc)
        raise SystemExit(1)
    if wants_traceback():
        traceback.print_exception(exc)
    exit_with(message)


def exit_with(message: str, status: int = 2) -> NoReturn:
    """Print the one line and leave with `status` (SystemExit passes through Hydra's handlers)."""
    print(f"effnet: error: {message}", file=sys.stderr)
    raise SystemExit(status)


def one_line(exc: BaseException) -> str | None:
    """The one-line message for an exception the user caused, or None when it is a bug."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        GrammarParseError,
        InterpolationResolutionError,
        MissingMandatoryValue,
    )

    from effnet.diskspace import NoSpace

    for err in _chain(exc):
        if isinstance(err, UserError | RankFailed):
            return str(err)
        if isinstance(err, MissingConfigException) and err.missing_cfg_file:
            return _unknown_option(err)
        if isinstance(err, ConfigCompositionException) and isinstance(
            err.__cause__, ConfigKeyError | ConfigAttributeError
        ):
            override = str(err).split("use +", 1)[-1].strip() if "use +" in str(err) else "KEY=VALUE"
            return _unknown_key(err.__cause__, override)
        if isinstance(err, MissingMandatoryValue):
            return f"{err.full_key} is required: set it on the command line, e.g. {err.full_key}=..."
        if isinstance(err, InterpolationResolutionError | GrammarParseError):  # a ${...} in a value
            reason = (str(err).splitlines() or [type(err).__name__])[0]
            return f"{err.full_key or 'a value'}: cannot resolve its ${{...}} interpolation: {reason}"
        if isinstance(err, OverrideParseException | ConfigCompositionException):
            return " ".join(str(err).split())
    full = NoSpace.of(exc)  # a write that failed for want of space (ENOSPC, EDQUOT, EROFS), wherever it was
    return None if full is None else str(full)
