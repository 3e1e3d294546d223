"""Rank the jobs of a sweep by their summary.json: a markdown and a CSV table, and one plot.

    python -m effnet.report outputs/multirun/<sweep>            # by the jobs' train.monitor, best first
    python -m effnet.report outputs/multirun/<sweep> --metric wall_time_s --minimize

Works from the files every job leaves in its folder (.hydra/overrides.yaml, summary.json,
error.txt, pruned.txt), so it needs no W&B account and also ranks a sweep that is still running
or was cut short. The swept parameters are the overrides whose values differ between jobs.
Writes report.md, report.csv and report.png into the sweep folder and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import yaml

from effnet.errors import UserError, exit_with
from effnet.files import write_csv, write_text

# Result columns shown after the swept parameters, when the summaries have them.
RESULT_COLUMNS = ("best_epoch", "best_val_f1", "epochs_completed", "train_images_per_sec", "wall_time_s")


def _value(text: str):
    """An override's value as YAML reads it: 1e-3 and 32 become numbers, b0 stays a string."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, int | float | str | bool) or value is None else text


def _job_sort_key(path: Path) -> tuple:
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, str(path))


def load_jobs(sweep_dir: Path) -> list[dict]:
    """One row per job folder (any folder below with .hydra/overrides.yaml): overrides, summary, status."""
    jobs = []
    for overrides_file in sweep_dir.rglob(".hydra/overrides.yaml"):
        job_dir = overrides_file.parent.parent
        overrides = {}
        for override in yaml.safe_load(overrides_file.read_text()) or []:
            key, _, value = str(override).partition("=")
            overrides[key.lstrip("+~")] = _value(value)
        row = {"job": job_dir.relative_to(sweep_dir).as_posix(), "dir": job_dir, "overrides": overrides}
        summary_file, error_file = job_dir / "summary.json", job_dir / "error.txt"
        pruned_file = job_dir / "pruned.txt"  # an Optuna trial its pruner stopped early
        if summary_file.is_file() and pruned_file.is_file():
            summary = json.loads(summary_file.read_text())
            row.update(status="pruned", summary=summary, pruned=pruned_file.read_text().strip())
        elif summary_file.is_file():
            row.update(status="ok", summary=json.loads(summary_file.read_text()))
        elif error_file.is_file():
            row.update(status="failed", summary={}, error=error_file.read_text().strip())
        else:
            row.update(status="unfinished", summary={})
        jobs.append(row)
    return sorted(jobs, key=lambda r: _job_sort_key(r["dir"]))


def swept_params(jobs: list[dict]) -> list[str]:
    """Override keys whose value is not the same in every job (all of them for a single job)."""
    keys = list(dict.fromkeys(k for job in jobs for k in job["overrides"]))
    if len(jobs) < 2:
        return keys
    return [k for k in keys if len({repr(job["overrides"].get(k)) for job in jobs}) > 1]


def _score(job: dict, metric: str) -> float | None:
    value = job["summary"].get(metric)
    return float(value) if isinstance(value, int | float) and not math.isnan(value) else None


def rank(jobs: list[dict], metric: str, minimize: bool = False) -> list[dict]:
    """Finished jobs with a score first, best first; then pruned ones (stopped early, so never the
    best), best first; then failed and unfinished jobs in job order."""

    def scored(status: str) -> list[dict]:
        group = [j for j in jobs if j["status"] == status and _score(j, metric) is not None]
        return sorted(group, key=lambda j: _score(j, metric), reverse=not minimize)

    ranked = scored("ok") + scored("pruned")
    return ranked + [j for j in jobs if not any(j is r for r in ranked)]


def _is_best(job: dict, metric: str) -> bool:
    return job["status"] == "ok" and _score(job, metric) is not None


def table(jobs: list[dict], params: list[str], metric: str) -> list[dict]:
    """Flat rows for the CSV and markdown tables, in ranked order; the first scored row is the best."""
    rows = []
    for i, job in enumerate(jobs, 1):
        score = _score(job, metric)
        row = {
            "rank": i if score is not None else "",
            "best": "★" if i == 1 and _is_best(job, metric) else "",
        }
        row["job"] = job["job"]
        row.update({p: job["overrides"].get(p, "") for p in params})
        row[metric] = score if score is not None else ""
        row.update({c: job["summary"].get(c, "") for c in RESULT_COLUMNS if c != metric})
        row["status"] = {"failed": f"failed: {job.get('error')}", "pruned": job.get("pruned")}.get(
            job["status"], job["status"]
        )
        rows.append(row)
    return rows


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def markdown(rows: list[dict], title: str) -> str:
    columns = list(rows[0])
    lines = [f"# {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def objective(jobs: list[dict]) -> tuple[str, bool]:
    """(summary key, lower is better) of what the sweep optimised: the best value of the jobs'
    train.monitor when they share one (a val/loss sweep is ranked by its loss, lowest first, as
    its sweeper minimised it); best val top-1 for val/acc, for summaries that predate the monitor,
    and for jobs that watched different metrics."""
    watched = {(j["summary"].get("monitor"), j["summary"].get("monitor_mode")) for j in jobs if j["summary"]}
    if len(watched) == 1:
        monitor, mode = watched.pop()
        if monitor not in (None, "val/acc") and mode in ("max", "min"):
            return "best_monitor_value", mode == "min"
    return "best_val_acc", False


def write_report(sweep_dir: Path, metric: str | None = None, minimize: bool = False) -> dict:
    """Write report.md, report.csv and report.png into the sweep folder; return their paths and the
    best job. metric None: what the sweep optimised (objective)."""
    from effnet.plots import metric_vs_params_png

    sweep_dir = Path(sweep_dir).expanduser()
    if not sweep_dir.is_dir():
        raise UserError(
            f"{sweep_dir}: folder not found; pass a sweep folder such as outputs/multirun/<date_time>"
        )
    jobs = load_jobs(sweep_dir)
    if not jobs:
        raise UserError(
            f"{sweep_dir}: no job folders (with .hydra/overrides.yaml) found; is it a multirun folder?"
        )
    if metric is None:
        metric, minimize = objective(jobs)
    params = swept_params(jobs)
    ranked = rank(jobs, metric, minimize)
    rows = table(ranked, params, metric)
    done = sum(j["status"] == "ok" for j in jobs)
    text = markdown(rows, f"Sweep {sweep_dir.name}: {len(jobs)} jobs, {done} finished, ranked by {metric}")
    best = ranked[0] if _is_best(ranked[0], metric) else None
    if best is not None:
        values = ", ".join(f"{p}={best['overrides'].get(p)}" for p in params) or "no swept values"
        text += (
            f"\nBest: job {best['job']} ({values}): {metric} {_score(best, metric):.4g}, "
            f"checkpoint {best['summary'].get('best_checkpoint')}\n"
        )
    paths = {
        "markdown": sweep_dir / "report.md",
        "csv": sweep_dir / "report.csv",
        "plot": sweep_dir / "report.png",
    }
    write_text(paths["markdown"], text)
    write_csv(paths["csv"], rows)
    points = [{**j["overrides"], metric: _score(j, metric)} for j in ranked]
    metric_vs_params_png(points, params, metric, paths["plot"], best=points[0] if best is not None else None)
    return {"text": text, "best": best, "rows": rows, "params": params, **paths}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m effnet.report", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "sweep_dir", type=Path, help="a multirun folder, e.g. outputs/multirun/2025-01-31_12-00-00"
    )
    parser.add_argument(
        "--metric",
        default=None,
        help="a summary.json key (default: the best value of the jobs' train.monitor, in its direction)",
    )
    parser.add_argument("--minimize", action="store_true", help="lower is better (e.g. --metric wall_time_s)")
    args = parser.parse_args(argv)
    try:
        report = write_report(args.sweep_dir, args.metric, args.minimize)
    except UserError as exc:
        exit_with(str(exc))
    print(report["text"])
    print(f"wrote {report['markdown']}, {report['csv']}, {report['plot']}")


if __name__ == "__main__":
    main()
