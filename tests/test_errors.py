"""A user's mistake becomes one line; anything else is a bug and keeps its traceback."""

import pytest
from hydra.errors import ConfigCompositionException

from effnet.errors import UserError, exit_with, one_line


def test_user_errors_anywhere_in_the_chain_are_the_line():
    try:
        try:
            raise UserError("lr=-1: must be a number > 0")
        except UserError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert one_line(outer) == "lr=-1: must be a number > 0"


def test_composition_errors_are_flattened_and_bugs_are_not_user_errors():
    assert one_line(ConfigCompositionException("bad\n  override\tline")) == "bad override line"
    assert one_line(ZeroDivisionError("a bug")) is None


def test_exit_with_prints_one_line_and_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        exit_with("data.root=/x: folder not found")
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "effnet: error: data.root=/x: folder not found\n"


def test_library_warnings_never_precede_the_one_line():
    """Held while a command checks its inputs: shown after success, dropped for a user's mistake,
    shown before a bug's traceback."""
    import warnings

    from effnet.errors import held_warnings

    def warn_then(exc):
        with held_warnings():
            warnings.warn("Detected pickle protocol 4 in the checkpoint", UserWarning, stacklevel=1)
            if exc is not None:
                raise exc

    with pytest.warns(UserWarning, match="pickle protocol"):
        warn_then(None)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with pytest.raises(UserError):
            warn_then(UserError("model.weights=x.pth: refusing to unpickle arbitrary objects"))
    assert shown == []
    with pytest.warns(UserWarning, match="pickle protocol"), pytest.raises(ZeroDivisionError):
        warn_then(ZeroDivisionError("a bug"))
