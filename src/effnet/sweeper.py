"""effnet's Hydra sweeper on Optuna's ask/tell API, behind `sweep=optuna` and `hydra/sweeper=optuna`.

The search space is written in Hydra's override grammar (`choice(b0,b2)`, `interval(0.1,0.5)`,
`tag(log,interval(1e-4,3e-3))`, `range(8,33,8)`, or one value that fixes a knob) and read with
Hydra's own parser. The sweeper asks the study for `n_jobs` trials at a time, launches them as one
batch through the configured launcher (the basic one runs them here one after another;
hydra/launcher=slurm submits one array job), and tells the study how each ended. Job folder <n>
holds trial <n>.

- Storage: any database URL Optuna's RDBStorage takes; by default `optuna.db` (SQLite) in the
  sweep folder, so that the jobs, wherever they run, read and write the same study.
- Resume: the study is loaded if it exists, and the sweep runs until it holds `n_trials` finished
  trials (complete, pruned or failed). Trials a killed sweep left running are recorded as failed
  and count among them; the sampler is seeded with `seed` + the number of trials already in the
  study, so a resumed sweep does not propose its first trials again.
- Objective: each job returns the best value of its train.monitor (val top-1 by default); the
  study's direction follows train.monitor_mode (objective_direction), so a sweep minimises
  train.monitor=val/loss without being told.
- Pruning: each job reports its per-epoch train.monitor to its trial (effnet.training.pruning), and
  stops early when the pruner says so; the sweeper records that trial as pruned, not failed.
  A job finds its trial through `hydra.sweeper.trial` and `hydra.sweeper.storage`, which the
  sweeper adds to each job's overrides (`job_trial`).

Hydra imports every plugin when it starts (hydra_plugins.effnet_sweeper names this sweeper
there), so this module imports neither optuna nor torch until a sweep or a trial needs them.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from effnet.errors import UserError, one_line

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("effnet")

DB_FILE = "optuna.db"  # the default storage, in the sweep folder
RESULTS_FILE = "optimization_results.yaml"
MONITOR = (
    "val/acc"  # train.monitor's default: what each job reports per epoch and returns at the end (its best)
)
ERROR_ATTR = "effnet_error"  # user attribute of a failed trial: why


@dataclass
class SearchSpace:
    """The sweep's overrides, by key (the last override of a key wins): the searched ones as
    Optuna distributions, the others passed to every job as written."""

    searched: dict[str, Any] = field(default_factory=dict)  # key -> BaseDistribution
    fixed: dict[str, str] = field(default_factory=dict)  # key -> value, as override text
    lines: dict[str, str] = field(default_factory=dict)  # key -> the override as given
    texts: dict[str, dict] = field(default_factory=dict)  # key -> {choice: override text}

    def overrides(self, params: dict[str, Any]) -> list[str]:
        """One job's overrides: every key in the order given, searched ones at the trial's values."""
        out = []
        for key, line in self.lines.items():
            if key in self.searched:
                value = params[key]
                text = self.texts.get(key, {}).get(value, None)
                out.append(f"{key}={text if text is not None else Transformer.str(value)}")
            else:
                out.append(line)
        return out


def parse_search_space(overrides: Sequence[str], config_loader=None) -> SearchSpace:
    """`key=value` strings (hydra.sweeper.params, then the command line) as a SearchSpace."""
    parsed = OverridesParser.create(config_loader=config_loader).parse_overrides(list(overrides))
    space = SearchSpace()
    for override in parsed:
        key = override.get_key_element()
        name = key.lstrip("+~")
        for old in [k for k in space.lines if k.lstrip("+~") == name]:  # an earlier override of it
            for table in (space.searched, space.fixed, space.lines, space.texts):
                table.pop(old, None)
        space.lines[key] = override.input_line or f"{key}={override.get_value_element_as_str()}"
        if override.is_sweep_override():
            space.searched[key], texts = distribution(override)
            if texts:
                space.texts[key] = texts
        else:
            space.fixed[key] = space.lines[key].partition("=")[2]  # as written
    return space


def distribution(override: Override) -> tuple[Any, dict]:
    """The Optuna distribution of one sweep override, and for choices of lists or dicts the
    override text of each choice (Optuna's categorical choices are plain values)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    key, value = override.get_key_element(), override.value()
    tags = set(getattr(value, "tags", ()) or ())
    if tags - {"log"}:
        raise UserError(
            f"{override.input_line}: tag({', '.join(sorted(tags - {'log'}))}, ...) means nothing to the "
            "Optuna sweeper; tag(log, interval(a, b)) samples on a log scale"
        )
    log_scale = "log" in tags
    if override.is_interval_sweep():
        low, high = float(value.start), float(value.end)
        if not low < high or (log_scale and low <= 0):
            need = "0 < a < b" if log_scale else "a < b"
            raise UserError(f"{override.input_line}: interval(a, b) needs {need}")
        return FloatDistribution(low, high, log=log_scale), {}
    values = list(override.sweep_iterator())  # choice, glob (group options) or range, in Hydra's order
    if not values:
        raise UserError(f"{override.input_line}: gives no value to try")
    if override.is_range_sweep() and not value.shuffle:
        low, high, step = min(values), max(values), abs(value.step)
        if all(isinstance(v, int) for v in values):
            if log_scale and (step != 1 or low <= 0):
                raise UserError(f"{override.input_line}: tag(log, range(a, b)) needs a step of 1 and 0 < a")
            return IntDistribution(low, high, log=log_scale, step=1 if log_scale else step), {}
        if log_scale:
            raise UserError(f"{override.input_line}: a log scale needs interval(a, b) or an int range")
        return FloatDistribution(low, high, step=step if len(values) > 1 else None), {}
    if log_scale:
        raise UserError(f"{override.input_line}: a log scale needs interval(a, b) or an int range")
    plain = (str, int, float, bool, type(None))
    choices = [v if isinstance(v, plain) else Transformer.str(v) for v in values]
    texts = {c: Transformer.str(v) for c, v in zip(choices, values, strict=True) if not isinstance(v, plain)}
    if len(set(map(repr, choices))) < len(choices):
        raise UserError(f"{key}: the same choice is given twice in {override.input_line}")
    return CategoricalDistribution(choices), texts


def quoted(text: str) -> str:
    """`text` as a quoted Hydra override value (a database URL may hold ?, &, = or quotes)."""
    text = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    text = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text)
    return f"'{text}'"


def storage_url(storage: str | None, sweep_dir: Path) -> str:
    """The study's database URL: `optuna.db` in the sweep folder when none is given; a relative
    SQLite path made absolute, so jobs that run elsewhere (SLURM) open the same file."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if not storage:
        return f"sqlite:///{(Path(sweep_dir).absolute() / DB_FILE).as_posix()}"
    try:
        url = make_url(str(storage))
    except ArgumentError:
        raise UserError(
            f"hydra.sweeper.storage={storage}: not a database URL; e.g. sqlite:///outputs/optuna.db, "
            "or postgresql://user:password@host/db"
        ) from None
    if url.get_backend_name() != "sqlite":
        return str(storage)
    if url.database in (None, "", ":memory:"):
        raise UserError(
            f"hydra.sweeper.storage={storage}: an in-memory database cannot be shared with the jobs; "
            "give a file, e.g. sqlite:///outputs/optuna.db (or leave it null: optuna.db in the sweep folder)"
        )
    path = Path(os.path.expanduser(url.database)).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    return url.set(database=path.as_posix()).render_as_string(hide_password=False)


def shown(url: str) -> str:
    """A database URL fit for logs and files: its password hidden."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def rdb_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDBStorage for `url`; SQLite waits up to a minute for a write lock, as several
    processes (the sweeper and its jobs) write one file."""
    import optuna

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as exc:  # sqlalchemy's: no driver, no server, no access
        reason = " ".join(str(exc).split())[:300]
        raise UserError(f"hydra.sweeper.storage: cannot open {shown(url)}: {reason}") from exc


def route_optuna_logs() -> None:
    """Optuna's messages through the logging Hydra set up (the console, and a job's train.log)."""
    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()


def build(cfg: DictConfig | dict | None, default: Any, **changes) -> Any:
    """A sampler or pruner from its `_target_` config (None: `default`), with `changes` applied."""
    from hydra.utils import instantiate

    if cfg is None:
        return default
    cfg = OmegaConf.merge(cfg, changes) if changes else cfg
    try:
        return instantiate(cfg)
    except Exception as exc:
        raise UserError(f"hydra.sweeper: cannot build {OmegaConf.select(cfg, '_target_')}: {exc}") from exc


def objective_direction(config: DictConfig, direction: str | None) -> tuple[str, str]:
    """(the study's direction, the metric it is about): what every job returns is its best
    train.monitor, so the direction is train.monitor_mode's. A hydra.sweeper.direction that says
    otherwise would search for the worst runs: one line."""
    from effnet.metrics import monitor_mode

    monitor = str(OmegaConf.select(config, "train.monitor", default=MONITOR))
    given = str(OmegaConf.select(config, "train.monitor_mode", default="auto"))
    mode = monitor_mode(monitor, given)
    wanted = "maximize" if mode == "max" else "minimize"
    if direction is not None and direction != wanted:
        raise UserError(
            f"hydra.sweeper.direction={direction}, but each job returns its best {monitor}, which is "
            f"{wanted}d (train.monitor_mode={given}{f': {mode}' if given == 'auto' else ''}); leave "
            "hydra.sweeper.direction=null, which follows train.monitor"
        )
    return wanted, monitor


# ----------------------------------------------------------------------------------------------
# The job's side: which trial it trains


@dataclass(frozen=True)
class TrialRef:
    """Where a job's trial lives; `open()` gives the optuna.Trial to report to (on rank 0)."""

    storage: str
    study_name: str
    number: int
    pruner: Any = None  # its config; None: never prune (the values are still reported)

    def open(self) -> optuna.Trial:
        import optuna

        route_optuna_logs()
        storage = rdb_storage(self.storage)
        study = optuna.load_study(
            study_name=self.study_name,
            storage=storage,
            sampler=optuna.samplers.RandomSampler(),  # a job suggests nothing
            pruner=build(self.pruner, optuna.pruners.NopPruner()),
        )
        study_id = storage.get_study_id_from_name(self.study_name)
        return optuna.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, self.number))


def job_trial(hydra_cfg: DictConfig) -> TrialRef | None:
    """The Optuna trial this job trains, when effnet's sweeper launched it (it sets
    hydra.sweeper.trial and hydra.sweeper.storage on each job); None otherwise."""
    sweeper = OmegaConf.select(hydra_cfg, "sweeper")
    number = OmegaConf.select(sweeper, "trial") if sweeper is not None else None
    if number is None:
        return None
    pruner = sweeper.get("pruner")
    return TrialRef(
        storage=storage_url(sweeper.get("storage"), Path(hydra_cfg.sweep.dir)),
        study_name=str(sweeper.study_name),
        number=int(number),
        pruner=None if pruner is None else OmegaConf.to_container(pruner, resolve=True),
    )


# ----------------------------------------------------------------------------------------------
# The sweeper


def job_outcome(ret: JobReturn) -> tuple[str, float | None, BaseException | None]:
    """("complete", value, None), ("pruned", None, why) or ("fail", None, why) for one job."""
    import optuna

    if ret.status == JobStatus.COMPLETED:
        value = ret.return_value
        try:
            value = float(value)
        except (TypeError, ValueError):
            return "fail", None, UserError(f"the job returned {value!r}, not a number to optimise")
        if math.isnan(value):
            return "fail", None, UserError("the job returned nan")
        return "complete", value, None
    error = ret._return_value  # the job's exception (return_value would print and raise it)
    if isinstance(error, optuna.TrialPruned):
        return "pruned", None, error
    if not isinstance(error, BaseException):
        error = RuntimeError(f"the job ended without a result (status {ret.status.name})")
    return "fail", None, error


def consecutive(trials: Sequence) -> Iterable[list]:
    """Runs of trials with consecutive numbers: each run is launched as one batch numbered from
    its first trial, so job folder <n> is trial <n>."""
    run: list = []
    for trial in trials:
        if run and trial.number != run[-1].number + 1:
            yield run
            run = []
        run.append(trial)
    if run:
        yield run


def describe(error: BaseException) -> str:
    return one_line(error) or f"{type(error).__name__}: {' '.join(str(error).split())}"


class OptunaSweeper(Sweeper):
    """Hydra sweeper: Optuna's ask/tell over batches of `n_jobs` trials (see the module docstring)."""

    def __init__(
        self,
        direction: str | None = None,  # None: train.monitor_mode's (objective_direction)
        study_name: str = "effnet",
        storage: str | None = None,
        n_trials: int = 20,
        n_jobs: int = 1,
        max_failure_rate: float = 1.0,
        sampler: DictConfig | None = None,
        pruner: DictConfig | None = None,
        params: DictConfig | None = None,
        trial: int | None = None,  # each job's own (job_trial); the sweeper does not use it
    ) -> None:
        super().__init__()
        self.direction = None if direction is None else str(direction)
        self.monitor = MONITOR
        self.study_name = str(study_name)
        self.storage = storage
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.max_failure_rate = max_failure_rate
        self.sampler = sampler
        self.pruner = pruner
        self.params = params or {}
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def _check(self) -> None:
        if self.direction not in ("maximize", "minimize", None):
            raise UserError(
                f"hydra.sweeper.direction={self.direction}: choose maximize, minimize or null (train.monitor's)"
            )
        assert self.config is not None
        self.direction, self.monitor = objective_direction(self.config, self.direction)
        for key in ("n_trials", "n_jobs"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"hydra.sweeper.{key}={value}: must be a whole number >= 1")
        rate = self.max_failure_rate
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
            raise UserError(f"hydra.sweeper.max_failure_rate={rate}: must be a number from 0 to 1")

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        self._check()
        route_optuna_logs()
        lines = [f"{k}={v}" for k, v in self.params.items()] + list(arguments)
        space = parse_search_space(lines, self.hydra_context.config_loader)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        url = storage_url(self.storage, sweep_dir)
        try:
            study = optuna.create_study(
                study_name=self.study_name,
                storage=rdb_storage(url),
                sampler=optuna.samplers.RandomSampler(),  # replaced below, once the study's size is known
                pruner=build(
                    self.pruner, optuna.pruners.NopPruner()
                ),  # the jobs prune; a bad config stops here
                direction=self.direction,
                load_if_exists=True,
            )
        except ValueError as exc:  # a loaded study's direction differs
            raise UserError(f"study {self.study_name} in {shown(url)}: {exc}") from exc
        self._fail_left_running(study)
        known = len(study.get_trials(deepcopy=False))
        seed = OmegaConf.select(self.sampler, "seed") if self.sampler is not None else None
        changes = {"seed": seed + known} if isinstance(seed, int) and known else {}
        study.sampler = build(self.sampler, optuna.samplers.TPESampler(), **changes)

        finished = self._finished(study)
        remaining = self.n_trials - sum(finished.values())
        log.info(
            "Optuna study %s in %s: %s%d of %d trials finished (%s); %d to run, %d at a time",
            self.study_name,
            shown(url),
            "continued, " if known else "",
            sum(finished.values()),
            self.n_trials,
            ", ".join(f"{n} {state}" for state, n in finished.items()),
            max(remaining, 0),
            self.n_jobs,
        )
        log.info("searching %s", ", ".join(space.lines[k] for k in space.searched) or "nothing (all fixed)")
        while remaining > 0:
            batch = [study.ask(space.searched) for _ in range(min(self.n_jobs, remaining))]
            self._run_batch(study, batch, space, url)
            remaining -= len(batch)
            if remaining > 0:
                self._write_results(study, sweep_dir, url, final=False)  # the best so far, after each batch
        self._write_results(study, sweep_dir, url)

    @staticmethod
    def _finished(study) -> dict[str, int]:
        from optuna.trial import TrialState

        counts = Counter(t.state for t in study.get_trials(deepcopy=False))
        return {
            "complete": counts[TrialState.COMPLETE],
            "pruned": counts[TrialState.PRUNED],
            "failed": counts[TrialState.FAIL],
        }

    def _fail_left_running(self, study) -> None:
        """Trials still running when the sweep starts were left by one that was killed: failed."""
        from optuna.trial import TrialState

        for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            log.warning(
                "trial %d was left running by a sweep that stopped before it finished: recorded as "
                "failed (it counts among the n_trials)",
                frozen.number,
            )
            self._fail(study, frozen._trial_id, "the sweep stopped (killed?) while this trial ran")

    @staticmethod
    def _fail(study, trial_id: int, why: str) -> None:
        from optuna.trial import TrialState

        study._storage.set_trial_user_attr(trial_id, ERROR_ATTR, why)
        study.tell(
            study._storage.get_trial_number_from_id(trial_id), state=TrialState.FAIL, skip_if_finished=True
        )

    def _run_batch(self, study, trials: list, space: SearchSpace, url: str) -> None:
        """Launch one batch of asked trials and tell the study how each ended."""
        for trial in trials:
            for key, value in space.fixed.items():
                trial.set_user_attr(key, value)
        jobs = {
            t.number: (
                *space.overrides(t.params),
                f"hydra.sweeper.trial={t.number}",
                f"hydra.sweeper.storage={quoted(url)}",
            )
            for t in trials
        }
        failures: list[BaseException] = []
        told = 0
        try:
            self.validate_batch_is_legal(list(jobs.values()))
            for run in consecutive(trials):
                launched = self.launcher.launch([jobs[t.number] for t in run], initial_job_idx=run[0].number)
                for trial, ret in zip(run, launched, strict=True):
                    error = self._tell(study, trial, ret)
                    told += 1
                    if error is not None:
                        failures.append(error)
        except BaseException as exc:  # Ctrl-C, sweep.fail_fast, a launcher error: no trial is left running
            for trial in trials[told:]:
                self._fail(study, trial._trial_id, f"the sweep stopped while this trial ran: {describe(exc)}")
            raise
        if failures and len(failures) / len(trials) > self.max_failure_rate:
            raise failures[0]

    def _tell(self, study, trial, ret: JobReturn) -> BaseException | None:
        """Record one job's end in the study; returns its error when it failed."""
        from optuna.trial import TrialState

        run_dir = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir") if ret.hydra_cfg else None
        if run_dir:
            trial.set_user_attr("run_dir", str(Path(run_dir).absolute()))
        state, value, error = job_outcome(ret)
        if state == "complete":
            study.tell(trial, value, skip_if_finished=True)
            log.info("trial %d: %s %.4f", trial.number, self.monitor, value)
            return None
        if state == "pruned":
            study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
            log.info("trial %d: pruned", trial.number)
            return None
        trial.set_user_attr(ERROR_ATTR, describe(error))
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        log.warning("trial %d failed: %s", trial.number, describe(error))
        return error

    def _write_results(self, study, sweep_dir: Path, url: str, final: bool = True) -> None:
        """optimization_results.yaml: the best trial so far, of the whole study. At the end, a
        study where no trial completed and some failed is an error."""
        from optuna.trial import TrialState

        finished = self._finished(study)
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        best = study.best_trial if complete else None
        results = {
            "name": "optuna",
            "study_name": self.study_name,
            "storage": shown(url),
            "direction": self.direction,
            "monitor": self.monitor,
            "best_trial": best.number if best else None,
            "best_params": dict(best.params) if best else None,
            "best_value": best.value if best else None,
            "best_run_dir": best.user_attrs.get("run_dir") if best else None,
            "trials": finished,
        }
        OmegaConf.save(OmegaConf.create(results), sweep_dir / RESULTS_FILE)
        if not final:
            return
        if best is not None:
            log.info("best: trial %d, %s %.4f, %s", best.number, self.monitor, best.value, best.params)
            return
        failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        if failed:
            first = failed[0]
            raise UserError(
                f"no trial of study {self.study_name} completed; trial {first.number} failed: "
                f"{first.user_attrs.get(ERROR_ATTR, 'see its train.log')}"
            )
        log.warning("no trial of study %s completed (%s)", self.study_name, finished)
