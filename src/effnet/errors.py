"""Errors a user can fix, and how any exception becomes the one line they read.

Config and data mistakes must not end in a traceback: the user needs the key, the value and the
fix. Everything that is not recognised here is a real bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import sys


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
    return f"unknown key '{key}' ({hint}); to add a new key write +{override}"


def exit_with(message: str, status: int = 2) -> None:
    """Print the one line and leave with `status` (SystemExit passes through Hydra's handlers)."""
    print(f"effnet: error: {message}", file=sys.stderr)
    raise SystemExit(status)


def one_line(exc: BaseException) -> str | None:
    """The one-line message for an exception the user caused, or None when it is a bug."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue

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
        if isinstance(err, OverrideParseException | ConfigCompositionException):
            return " ".join(str(err).split())
    return None
