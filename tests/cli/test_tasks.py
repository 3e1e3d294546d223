"""eval.py, predict.py and export.py as Hydra tasks: their values are checked before any model loads."""

import pytest

from effnet.cli.validate import validate_command
from effnet.errors import UserError
from tests.helpers import compose_cfg, run_script


@pytest.mark.parametrize("script", ["eval.py", "predict.py", "export.py"])
def test_missing_ckpt_is_one_line_before_torch(script, tmp_path):
    result = run_script(script, [], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "effnet: error: ckpt is required: pass a .ckpt file, a training run folder or an export bundle"
    ]
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("command", ["eval", "predict", "export"])
def test_workers_must_be_auto_or_a_count(command, tmp_path):
    overrides = [f"ckpt={tmp_path}", "num_workers=true"] + (["inputs=x"] if command == "predict" else [])
    with pytest.raises(UserError, match="num_workers=True: must be auto or an integer >= 0"):
        validate_command(command, compose_cfg(overrides, config_name=command))
