"""The Python API: what the command line does, callable from a notebook or a script.

    import depthtune

    result = depthtune.run({"data": {"max_train_prompts": 24}}, run_dir="runs/nb")
    result.accuracy, result.metrics["deltas"]["accuracy"]["ci95"]
    depthtune.compare({"distill": {"student": "context"}}, run_dir="runs/cmp").decision
    depthtune.ablate({"ablate": {"label_free": True}}, run_dir="runs/abl").findings
    depthtune.sweep("examples/sweep.yaml").findings

Each takes a config: a RunConfig, a dict shaped like config.yaml (checked the same way), a YAML file's
path, or None (the defaults); and returns a dataclass holding the figures the report shows (the whole
metrics dict included). Each locks its directory while it works, as the commands do, and raises
DepthtuneError with the one-line message the command line prints.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from .artifacts import DirLock
from .config import RunConfig, from_dict, load_config, validate
from .errors import DepthtuneError


def as_config(config) -> RunConfig:
    """A RunConfig from a RunConfig, a dict (config.yaml's shape), a YAML path, or None."""
    if config is None:
        return validate(RunConfig())
    if isinstance(config, RunConfig):
        return validate(config)
    if isinstance(config, dict):
        return validate(from_dict(RunConfig, config))
    if isinstance(config, (str, Path)):
        return load_config(config)
    raise DepthtuneError(f"a config is a RunConfig, a dict or a YAML path, not {type(config).__name__}")


def _main() -> bool:
    from . import distributed

    return distributed.is_main()


def _locked(folder: Path, what: str = "run directory", log=print):
    """The directory's lock on the main process (under accelerate launch the others work in it too)."""
    import contextlib

    return DirLock(folder, log, what) if _main() else contextlib.nullcontext()


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict
    """Everything the report shows (metrics.json)."""
    rounds: dict = field(default_factory=dict)
    """With rounds > 1 (rounds.json): per round, accuracy with its interval against the base and the round before."""
    rounds_lines: list[str] = field(default_factory=list)

    @property
    def accuracy(self) -> tuple[float | None, float | None]:
        """(before, after) held-out accuracy."""
        return self.metrics["before"].get("accuracy"), self.metrics["after"].get("accuracy")

    @property
    def report(self) -> Path:
        return self.run_dir / ("rounds.md" if self.rounds else "report.md")


def run(config=None, run_dir: str | Path = "runs/depthtune", *, redo: bool = False, log=print) -> RunResult | None:
    """`depthtune run`: every stage (rounds.n > 1: that many rounds), -> RunResult (None on the other
    processes of accelerate launch)."""
    cfg, run_dir = as_config(config), Path(run_dir)
    with _locked(run_dir, log=log):
        if cfg.rounds.n > 1:
            from .stages.rounds import run_rounds

            out = run_rounds(run_dir, cfg, log=log, redo=redo)
            return None if out is None else RunResult(run_dir, out["metrics"], out["rounds"], out["lines"])
        from .stages.pipeline import run_all

        metrics = run_all(run_dir, cfg, log=log, redo=redo)
    return None if metrics is None else RunResult(run_dir, metrics)


def stages(command: str, config=None, run_dir: str | Path = "runs/depthtune", *, redo: bool = False,
           log=print) -> dict:
    """One stage command (`depthtune score`, ...): its stages, after prepare; -> {stage name: result}.
    The stages it reads must have finished (checked before anything is written or loaded)."""
    from . import distributed
    from .stages import BY_NAME, of_command
    from .stages.pipeline import Session, run_stage, run_stages

    cfg, run_dir = as_config(config), Path(run_dir)
    chosen = of_command(command)
    if not chosen:
        raise DepthtuneError(f"unknown stage command '{command}'")
    for stage in chosen[:1]:  # before anything is written or loaded
        for need in stage.needs:
            dep = BY_NAME[need]
            if dep.name != "prepare" and not (run_dir / dep.marker).exists():
                raise DepthtuneError(f"the {dep.command} stage has not run in {run_dir}: run `depthtune {dep.command} "
                                     f"--run-dir {run_dir}` (or `depthtune run`) first")
    with _locked(run_dir, log=log):
        session = Session(cfg, log)
        try:
            out = run_stages(run_dir, cfg, session, ["prepare"] + [s.name for s in chosen],
                             redo_names=[s.name for s in chosen] if redo else [])
            if command == "evaluate" and "lm-eval" in out and (run_dir / "metrics.json").exists():
                out["report"] = run_stage(BY_NAME["report"], run_dir, cfg, session)  # bring the report up to date
        finally:
            session.close()
        if redo and distributed.is_main():
            later = stale_after(run_dir, cfg, chosen)
            if later:
                log(f"[{command}] note: {', '.join(later)} were made from the old {command} output; redo them "
                    f"too (`depthtune <stage> --redo`)")
    return out


def stale_after(run_dir: Path, cfg: RunConfig, redone) -> list[str]:
    """Finished stages made, directly or through others, from an older output of a redone stage."""
    from .stages import STAGES
    from .stages.pipeline import recorded, staleness

    changed, out = {s.name for s in redone}, []
    for s in STAGES:
        if s.name in changed or not recorded(run_dir, s):
            continue
        if staleness(run_dir, s, cfg) or changed & set(s.needs):
            changed.add(s.name)
            out.append(s.name)
    return out


@dataclass
class CompareResult:
    run_dir: Path
    metrics: dict
    """compare.json: every model's figures, distilled - alone and teacher - alone with intervals, the decision."""

    @property
    def decision(self) -> list[str]:
        return self.metrics["decision"]

    @property
    def accuracy(self) -> dict[str, float | None]:
        return {name: m.get("accuracy") for name, m in self.metrics["models"].items()}


def compare(config=None, run_dir: str | Path = "runs/compare", *, log=print) -> CompareResult | None:
    """`depthtune compare`: teacher, student untouched, trained alone and distilled; -> CompareResult."""
    from .distill.compare import run_compare

    cfg, run_dir = as_config(config), Path(run_dir)
    with _locked(run_dir, log=log):
        m = run_compare(run_dir, cfg, log=log)
        if m is None:
            return None
        from .stages.pipeline import track
        from .tracking import compare_summary

        track(cfg, run_dir, compare_summary(m), log)
    return CompareResult(run_dir, m)


@dataclass
class AblateResult:
    run_dir: Path
    metrics: dict
    """ablate.json: per selector, accuracy with intervals against the untrained model and the reference."""

    @property
    def findings(self) -> list[str]:
        return self.metrics["findings"]


def ablate(config=None, run_dir: str | Path = "runs/ablate", *, executor: str = "local", address: str | None = None,
           redo: bool = False, log=print) -> AblateResult | None:
    """`depthtune ablate`: one adapter per selector and seed on equal-sized selections; -> AblateResult."""
    from .experiments.ablate import run_ablate

    cfg, run_dir = as_config(config), Path(run_dir)
    with _locked(run_dir, log=log):
        m = run_ablate(run_dir, cfg, log=log, executor=executor, address=address, redo=redo)
    return None if m is None else AblateResult(run_dir, m)


@dataclass
class SweepResult:
    sweep_dir: Path
    metrics: dict
    """sweep.json: every cell's result, the findings and the failed cells."""

    @property
    def findings(self) -> list[str]:
        return self.metrics["findings"]

    @property
    def done(self) -> list:
        return self.metrics["done"]

    @property
    def failed(self) -> list:
        return self.metrics["failed"]

    @property
    def cells(self) -> int:
        return self.metrics["cells"]


def sweep(sweep, sweep_dir: str | Path | None = None, *, sweep_text: str | None = None, executor: str = "local",
          address: str | None = None, log=print) -> SweepResult | None:
    """`depthtune sweep`: `sweep` is a Sweep (experiments.grid.load_sweep) or a sweep file's path."""
    from .experiments.grid import load_sweep
    from .experiments.sweep import run_sweep

    if isinstance(sweep, (str, Path)):
        sweep_text = Path(sweep).read_text()
        sweep = load_sweep(sweep)
    folder = Path(sweep_dir or Path("runs") / "sweeps" / sweep.name)
    with _locked(folder, "sweep directory", log):
        m = run_sweep(sweep, folder, log=log, sweep_text=sweep_text, executor=executor, address=address)
    return None if m is None else SweepResult(folder, m)


def sweep_plan(sweep) -> list[str]:
    """What `depthtune sweep --dry-run` prints: the cells and the shared teacher jobs."""
    from .experiments.plan import make_plan

    plan = make_plan(sweep)
    lines = [f"{len(plan.cells)} cells, {len(plan.jobs)} shared teacher jobs, {len(plan.ensembles)} ensembles"]
    for key, job in plan.jobs.items():
        lines.append(f"  teacher job {key}: {len(job.prompts)} prompts x {job.gen['k']} samples"
                     f"{', top-k ' + str(job.topk) if job.topk else ''}{', CDM' if job.needs_cdm else ''}")
    lines += [f"  cell {cp.cell.group}, seed={cp.cell.settings['seed']}: {len(cp.prompts)} prompts" for cp in plan.cells]
    return lines


def export_gguf(run_dir: str | Path = "runs/depthtune", quant: str = "q8_0", log=print) -> Path:
    """`depthtune export --gguf`: the run's tuned model as a GGUF file; -> its path."""
    from .stages.export import export

    run_dir = Path(run_dir)
    with _locked(run_dir, log=log):
        return export(run_dir, quant, log=log)


def replace(cfg: RunConfig, **sections) -> RunConfig:
    """A copy of cfg with some sections' keys changed: replace(cfg, train={"rank": 8})."""
    out = dataclasses.replace(cfg)
    for name, values in sections.items():
        setattr(out, name, dataclasses.replace(getattr(cfg, name), **values))
    return validate(out)
