"""What identifies a job within a Hydra multirun: the keys the sweep varies, the job's short name,
the sweep it belongs to. Torch-free, so the CLI can name a failed job without heavy imports."""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def swept_keys(hydra_cfg: DictConfig, argv: list[str] | None = None) -> set[str]:
    """Keys a multirun varies: comma lists on the command line and the sweeper's `params`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except Exception:  # a launcher that runs jobs under its own command line: fall back to params
        parsed = []
    keys = {o.key_or_group for o in parsed if o.is_sweep_override()}
    params = OmegaConf.select(hydra_cfg, "sweeper.params") or {}
    return keys | {str(k).lstrip("+~") for k in params}


def job_name(hydra_cfg: DictConfig) -> str:
    """The job's swept values, e.g. `lr=0.001,dropout=0.2`; all its overrides when none is known."""
    swept = swept_keys(hydra_cfg)
    own = [o for o in hydra_cfg.overrides.task if o.split("=", 1)[0].lstrip("+~") in swept]
    return ",".join(own) or hydra_cfg.job.override_dirname or f"job {hydra_cfg.job.num}"


def sweep_group(hydra_cfg: DictConfig) -> str:
    """Shared by every job of one multirun: the sweep folder's name (its start time)."""
    return Path(hydra_cfg.sweep.dir).name
