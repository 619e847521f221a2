"""`depthtune run`, one module per pipeline stage (the layout is the data flow).

STAGES, below, is the one place the stages and their order are written:

    prepare -> generate -> score -> evaluate-base -> select -> train -> merge -> evaluate-tuned
            -> lm-eval (with --lm-eval) -> report

`depthtune run` runs them in this order (pipeline.py), each stage command runs the stages it names
(`depthtune evaluate` runs evaluate-base and evaluate-tuned), and under `accelerate launch` a
main_process_only stage runs on the main process while the others wait. Each stage reads the run
directory and writes its own files there; it is finished exactly when its marker file exists, and the
marker records a fingerprint of the settings its output depends on (and of the stages it read), so a
stage made under other settings is never silently reused. The base is answered before selection so that
the model loaded for sampling and scoring serves it too, before training changes it.

Stages use only the core modules (depthtune/*.py) and the samplers in depthtune.backends.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Stage:
    name: str
    needs: tuple[str, ...]
    """Stages whose output this one reads (they must be finished first)."""
    main_process_only: bool
    """Under accelerate launch: the main process runs it alone (the others wait), else every process takes part."""
    run: Callable
    """run(run_dir, cfg, session) -> its result; the session holds the models of one command."""
    command: str
    """The subcommand that runs this stage on its own (`depthtune <command> --run-dir D`)."""
    marker: str | None
    """File (relative to the run dir) that exists once the stage has finished; None: it always runs (it
    skips its own finished parts)."""
    outputs: tuple[str, ...] = ()
    """What the stage writes (globs relative to the run dir): moved aside by --redo, restored if the redo fails."""
    settings: tuple[str, ...] = ()
    """Config keys (a section name means all of its keys) whose values its output depends on."""
    when: Callable | None = None
    """when(cfg) -> bool: whether `run` includes the stage (None: always)."""


# what a stage's output does not depend on: bookkeeping, speed and memory knobs
NOT_SETTINGS = ("train.save_steps", "train.gradient_checkpointing", "score.batch_size", "evaluate.deep_line",
                "evaluate.lm_eval", "evaluate.lm_eval_limit")
ANSWERS = ("model.name", "model.quantize", "data.template", "data.system_prompt")
PROMPTS = ("data.path", "data.eval_path", "data.prompt_field", "data.answer_field", "data.eval_fraction", "data.suites",
           "data.max_train_prompts", "data.max_eval_prompts", "data.seed", "data.suite_size")


# Each stage's module is imported when the stage runs: `depthtune --help` and the stage table stay cheap.

def _prepare(run_dir: Path, cfg, session):
    from . import prepare

    return prepare.run(run_dir, cfg, session.tokenizer(), session.log)


def _generate(run_dir: Path, cfg, session):
    from . import generate

    return generate.run(run_dir, cfg, session.sampler())


def _score(run_dir: Path, cfg, session):
    from . import score

    cdm = score.needs_cdm(run_dir, cfg)
    model, tok = session.base() if cdm else (None, session.tokenizer())
    return score.run(run_dir, cfg, model, tok, cdm)


def _evaluate(which: str):
    def run(run_dir: Path, cfg, session):
        from . import evaluate

        model, tok = session.base() if which == "base" else session.tuned()
        sampler = session.served() if which == "base" else session.served_tuned(run_dir)
        summary = evaluate.evaluate_model(run_dir, cfg, which, model, tok, log=session.log, sampler=sampler)
        if all((Path(run_dir) / "evaluate" / f"{w}.json").exists() for w in evaluate.WHICH):
            evaluate.finish(run_dir, cfg)
        return summary
    return run


def _select(run_dir: Path, cfg, session):
    from . import select

    return select.run(run_dir, cfg, log=session.log)


def _train(run_dir: Path, cfg, session):
    from . import train

    return session.trained_by(train.run(run_dir, cfg, *session.take_base()))


def _merge(run_dir: Path, cfg, session):
    from . import merge

    return session.merged_by(merge.run(run_dir, cfg, session.load, session.trained))


def _lm_eval(run_dir: Path, cfg, session):
    from . import benchmark

    return benchmark.run(run_dir, cfg, session.log)


def _report(run_dir: Path, cfg, session):
    from . import report

    return report.run(run_dir)


STAGES = (
    Stage("prepare", (), False, _prepare, "prepare", "prompts/manifest.json", ("prompts",), PROMPTS),
    Stage("generate", ("prepare",), False, _generate, "generate", "generate/manifest.json", ("generate",),
          ANSWERS + ("generate",)),
    Stage("score", ("generate",), False, _score, "score", "score/manifest.json", ("score",),
          ("model.name", "model.quantize", "score", "data.checker")),
    Stage("evaluate-base", ("prepare",), False, _evaluate("base"), "evaluate", "evaluate/base.json",
          ("evaluate/base.*",), ANSWERS + ("evaluate", "score", "data.checker")),
    Stage("select", ("score",), True, _select, "select", "select/manifest.json", ("select",), ("select",)),
    Stage("train", ("select",), False, _train, "train", "train/manifest.json", ("train",), ("train",)),
    Stage("merge", ("train",), True, _merge, "merge", "merge/manifest.json", ("merge",)),
    Stage("evaluate-tuned", ("merge",), False, _evaluate("tuned"), "evaluate", "evaluate/tuned.json",
          ("evaluate/tuned.*",), ("data.template", "data.system_prompt", "evaluate", "score", "data.checker")),
    Stage("lm-eval", ("merge",), True, _lm_eval, "evaluate", None, when=lambda cfg: bool(cfg.evaluate.lm_eval)),
    Stage("report", ("evaluate-base", "evaluate-tuned"), True, _report, "report", None),
)
BY_NAME = {s.name: s for s in STAGES}
COMMANDS = tuple(dict.fromkeys(s.command for s in STAGES))  # the stage commands, in pipeline order


def before(name: str) -> list[str]:
    """The names of the stages that come before `name` (ablate runs these once, then its own cells)."""
    return [s.name for s in STAGES[:[s.name for s in STAGES].index(name)]]


def of_command(command: str) -> list[Stage]:
    return [s for s in STAGES if s.command == command]
