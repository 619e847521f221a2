"""The command line: one subcommand per stage, and `run` for all of them.

    depthtune run [--model M] [--data F --prompt-field P --answer-field A] [--run-dir D]
    depthtune generate|score|select|train|merge|evaluate|report --run-dir D
    depthtune compare [--teacher T] [--student S | --student-layers N]
    depthtune sweep sweep.yaml [--sweep-dir D] [--dry-run]

Every subcommand reads and writes one run directory; the resolved config lives in
<run>/config.yaml, so later stages see the settings earlier ones used, and flags given
to a later stage change only what has not yet been done.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import artifacts
from .config import RunConfig, load_config
from .errors import DepthtuneError

STAGES = ("generate", "score", "select", "train", "merge", "evaluate", "report")
NEEDS = {"score": "generate", "select": "score", "train": "select", "merge": "train", "evaluate": "merge",
         "report": "evaluate"}  # the stage whose output each stage reads
FLAGS = {  # CLI flag -> config key
    "model": "model.name", "data": "data.path", "eval_data": "data.eval_path",
    "prompt_field": "data.prompt_field", "answer_field": "data.answer_field", "checker": "data.checker",
    "max_train_prompts": "data.max_train_prompts", "max_eval_prompts": "data.max_eval_prompts",
    "k": "generate.k", "threshold": "select.threshold", "rank": "train.rank", "epochs": "train.epochs",
    "full": "train.full", "selector": "select.selector", "keep": "select.keep", "quantize": "model.quantize",
    "template": "data.template", "backend": "backend.kind", "base_url": "backend.base_url",
    "served_model": "backend.model", "api_key_env": "backend.api_key_env", "report_to": "report_to",
    "lm_eval": "evaluate.lm_eval",
}
COMPARE_FLAGS = {
    "teacher": "distill.teacher", "student": "distill.student", "student_layers": "distill.student_layers",
    "online": "distill.online", "temperature": "distill.temperature", "priority": "distill.priority",
    "calls_per_day": "distill.calls_per_day", "method": "distill.method",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="depthtune", description="Keep a model's deepest answers, "
                                     "train a LoRA on them, merge it, and measure before and after.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run",) + STAGES + ("compare", "ablate"):
        helps = {"run": "all stages in order", "compare": "teacher vs student: alone, distilled, untouched",
                 "ablate": "does CDM select better data? one adapter per selector on equal-sized selections"}
        p = sub.add_parser(name, help=helps.get(name, f"the {name} stage only"))
        default_dir = {"compare": "runs/compare", "ablate": "runs/ablate"}.get(name, "runs/depthtune")
        p.add_argument("--run-dir", default=default_dir, help=f"run directory (default {default_dir})")
        p.add_argument("--config", help="YAML config (default: <run-dir>/config.yaml if present)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. --set train.rank=8")
        p.add_argument("--data", help="prompts: .jsonl, .csv, .parquet or a saved dataset dir (default: built-in suites)")
        p.add_argument("--eval-data", help="held-out prompts (default: a split of --data)")
        p.add_argument("--prompt-field", help="prompt column (default 'prompt'; chat 'messages' rows need none)")
        p.add_argument("--answer-field", help="reference-answer column (default 'answer')")
        p.add_argument("--checker", help="auto, numeric, exact or contains")
        p.add_argument("--max-train-prompts", type=int)
        p.add_argument("--max-eval-prompts", type=int)
        p.add_argument("--template", choices=("auto", "chat", "raw"), help="prompt format: the model's chat "
                       "template, or the raw text (completion-style data); default auto")
        p.add_argument("--quantize", choices=("4bit", "8bit"), help="load the base in 4 or 8 bits (bitsandbytes); "
                       "training becomes QLoRA")
        p.add_argument("--backend", choices=("local", "openai", "llama-server"), help="where answers are sampled: "
                       "in this process (local), an OpenAI-compatible server, or llama.cpp's server started here")
        p.add_argument("--base-url", help="the OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
        p.add_argument("--served-model", help="the model's name on the server (default: its only model)")
        p.add_argument("--api-key-env", help="environment variable that holds the server's API key")
        p.add_argument("--report-to", help="tracker for training and stage metrics: tensorboard, mlflow, trackio, wandb")
        if name != "compare":  # compare names its models and CDM line with --teacher, --student and distill.*
            p.add_argument("--model", help="HF model id, model directory or .gguf file (default: embedded SmolLM2)")
            p.add_argument("--k", type=int, help="samples per training prompt")
            p.add_argument("--threshold", type=float, help="CDM line for selection, 0-100 (default 75)")
            p.add_argument("--rank", type=int, help="LoRA rank")
            p.add_argument("--epochs", type=float)
            p.add_argument("--full", action="store_true", default=None, help="full fine-tuning instead of LoRA")
        if name in ("run", "select", "ablate"):
            p.add_argument("--selector", help="cdm (default), correct, random, logprob, or one CDM part alone")
            p.add_argument("--keep", type=int, help="keep exactly this many samples, the selector's best")
        if name in ("run", "evaluate"):
            p.add_argument("--lm-eval", nargs="+", metavar="TASK", help="lm-evaluation-harness tasks (or task "
                           "YAML files) on the base and tuned model")
        if name not in ("run", "compare", "ablate"):
            p.add_argument("--redo", action="store_true", help="discard this stage's output and run it again")
        if name == "compare":
            p.add_argument("--teacher", help="teacher model (default: the embedded SmolLM2-135M-Instruct)")
            p.add_argument("--student", help="student model sharing the tokenizer (default: the teacher pruned)")
            p.add_argument("--student-layers", type=int, help="layers a pruned student keeps (default: half)")
            p.add_argument("--method", choices=("full", "lora"), help="how students are trained (default full)")
            p.add_argument("--online", action="store_true", default=None, help="run the teacher on every batch "
                           "instead of caching its top-k log-probs")
            p.add_argument("--temperature", type=float, help="soft-target temperature (default 2)")
            p.add_argument("--priority", choices=("accuracy", "latency", "budget"), help="what the decision optimises")
            p.add_argument("--calls-per-day", type=int, help="answers per day, for the compute cost")
    p = sub.add_parser("sweep", help="a grid of distillation cells from a sweep file, with a report")
    p.add_argument("file", help="sweep YAML (see examples/sweep.yaml)")
    p.add_argument("--sweep-dir", help="output directory (default runs/sweeps/<sweep name>)")
    p.add_argument("--dry-run", action="store_true", help="check the file and list the cells and shared teacher "
                   "jobs without running anything")
    return parser


def sweep_command(args) -> int:
    """0 when every cell finished; 1 when some failed (their errors are in the report)."""
    from .experiments.grid import load_sweep
    from .experiments.sweep import make_plan, run_sweep

    sweep = load_sweep(args.file)
    folder = Path(args.sweep_dir or Path("runs") / "sweeps" / sweep.name)
    if args.dry_run:
        plan = make_plan(sweep)
        print(f"{len(plan.cells)} cells, {len(plan.jobs)} shared teacher jobs, {len(plan.ensembles)} ensembles")
        for key, job in plan.jobs.items():
            print(f"  teacher job {key}: {len(job.prompts)} prompts x {job.gen['k']} samples"
                  f"{', top-k ' + str(job.topk) if job.topk else ''}{', CDM' if job.needs_cdm else ''}")
        for cp in plan.cells:
            print(f"  cell {cp.cell.group}, seed={cp.cell.settings['seed']}: {len(cp.prompts)} prompts")
        return 0
    preflight(sweep.base, "sweep")
    m = run_sweep(sweep, folder, sweep_text=Path(args.file).read_text())
    if m is None:  # another process of accelerate launch: the main one reports
        return 0
    print("\n" + "\n".join(f"- {f}" for f in m["findings"]).replace("**", ""))
    print(f"\n{len(m['done'])} of {m['cells']} cells done, {len(m['failed'])} failed; "
          f"report: {folder / 'sweep_report.md'} and {folder / 'sweep_report.html'}")
    return 1 if m["failed"] else 0


def resolve_config(args) -> RunConfig:
    run_dir = Path(args.run_dir)
    path = args.config or (run_dir / "config.yaml" if (run_dir / "config.yaml").exists() else None)
    flags = {key: getattr(args, flag, None) for flag, key in {**FLAGS, **COMPARE_FLAGS}.items()}
    return load_config(path, args.set, **flags)


def print_table(metrics: dict) -> None:
    from .stages.report import ROWS, _fmt

    b, a, d = metrics["before"], metrics["after"], metrics["deltas"]
    print(f"\n{'metric':<28}{'before':>10}{'after':>10}   change (95% interval)")
    for key, label, fmt in ROWS:
        scale = 100 if key in ("accuracy", "deep_rate") else 1
        ci = d.get(key, {}).get("ci95")
        change = f"{d[key]['delta'] * scale:+.1f} ({ci[0] * scale:+.1f} to {ci[1] * scale:+.1f})" if ci else ""
        print(f"{label.format(line=metrics['deep_line']):<28}{_fmt(b.get(key), fmt):>10}{_fmt(a.get(key), fmt):>10}"
              f"   {change}")
    s, au = metrics["selection"], metrics["auroc"].get("cdm")
    how = f"CDM >= {s['threshold']:g}" if s["selector"] == "cdm" else f"selector {s['selector']}"
    within = (au or {}).get("within_prompt", {}).get("value")
    print(f"\nkept {s['kept']}/{s['total']} samples ({how}); {metrics['trainable_params']:,} trainable params; "
          f"trained {metrics['train_seconds']:.0f} s; CDM AUROC " +
          (f"{au['pooled']:.2f} pooled, {within:.2f} within prompt" if au and within is not None else
           f"{au['pooled']:.2f} pooled" if au else "n/a"))


def run_stage(name: str, run_dir: Path, cfg: RunConfig, redo: bool) -> None:
    import shutil

    from . import distributed

    stage_dir = run_dir / name
    backup = run_dir / f".{name}.before-redo"
    main = distributed.is_main()  # under accelerate launch only the main process moves folders
    if redo and stage_dir.exists() and main:
        shutil.rmtree(backup, ignore_errors=True)
        stage_dir.rename(backup)  # put back if the redo fails: a failed redo loses nothing
        later = [s for s in STAGES[STAGES.index(name) + 1:] if artifacts.is_done(run_dir / s)]
        if later:
            print(f"[{name}] note: {', '.join(later)} were made from the old {name} output; "
                  f"redo them too (`depthtune <stage> --redo`)")
    distributed.barrier()  # every process sees the same stage folder before deciding
    if name != "report" and artifacts.is_done(stage_dir):
        print(f"[{name}] already finished in {run_dir}; pass --redo to run it again")
        if name == "evaluate" and cfg.evaluate.lm_eval:  # the benchmarks can still be added
            _run_one("lm-eval", run_dir, cfg)
        return
    try:
        _run_one(name, run_dir, cfg)
    except BaseException:
        if backup.exists() and main:
            shutil.rmtree(stage_dir, ignore_errors=True)
            backup.rename(stage_dir)
        raise
    if main:
        shutil.rmtree(backup, ignore_errors=True)
    print(f"[{name}] done -> {stage_dir if name != 'report' else run_dir / 'report.md'}")


MAIN_ONLY = ("select", "merge", "lm-eval", "report")


def _run_one(name: str, run_dir: Path, cfg: RunConfig) -> None:
    from . import distributed
    from .stages import pipeline

    needs = NEEDS.get(name)
    if needs and not artifacts.is_done(run_dir / needs):  # before anything is written or loaded
        raise DepthtuneError(f"the {needs} stage has not run in {run_dir}: run `depthtune {needs} --run-dir "
                             f"{run_dir}` (or `depthtune run`) first")
    pipeline.prepare(run_dir, cfg)
    session = pipeline.Session(cfg)
    try:
        if name in MAIN_ONLY:  # under accelerate launch the main process runs these, the others wait
            distributed.on_main(lambda: _stage(name, run_dir, cfg, session))
        else:
            _stage(name, run_dir, cfg, session)
    finally:
        session.close()


def _stage(name: str, run_dir: Path, cfg: RunConfig, session) -> None:
    from . import distributed, tracking
    from .stages import benchmark, evaluate, generate, merge, pipeline, report, score, select, train

    if name == "generate":
        generate.run(run_dir, cfg, session.sampler())
    elif name == "score":
        score.run(run_dir, cfg, *session.base())
    elif name == "select":
        m = select.run(run_dir, cfg)
        print(f"kept {m['kept']} of {m['total']} samples (CDM >= {m['threshold']:g})")
    elif name == "train":
        train.run(run_dir, cfg, *session.take_base())
    elif name == "merge":
        merge.run(run_dir, cfg, session.load)
    elif name == "evaluate":
        evaluate.evaluate_model(run_dir, cfg, "base", *session.base(), sampler=pipeline.served(session))
        session._model = None
        evaluate.evaluate_model(run_dir, cfg, "tuned", *pipeline.tuned_model(run_dir, session))
        distributed.on_main(lambda: evaluate.finish(run_dir, cfg))
        if cfg.evaluate.lm_eval:
            session._model = None
            distributed.on_main(lambda: _stage("lm-eval", run_dir, cfg, session))
    elif name == "lm-eval":
        print("\n".join(benchmark.render(benchmark.summary_of(benchmark.run(run_dir, cfg)))))
        if (run_dir / "metrics.json").exists():  # a report made before: bring it up to date
            report.run(run_dir)
            print(f"report updated: {run_dir / 'report.md'}")
    elif name == "report":
        metrics = report.run(run_dir)
        print_table(metrics)
        pipeline.track(cfg, run_dir, tracking.run_summary(metrics))


def preflight(cfg: RunConfig, command: str) -> None:
    """Quantisation and placement refused in one line before any model loads; under accelerate launch,
    the process group is made here (see depthtune.distributed) before any stage waits on it."""
    from . import distributed
    from .backends.llama_server import choose_backend
    from .models import require_bitsandbytes

    require_bitsandbytes(cfg.model.quantize)
    if command == "compare" and cfg.model.quantize and not cfg.distill.student:
        raise DepthtuneError(f"--quantize {cfg.model.quantize} loads the teacher quantised, and a pruned student "
                             f"would copy those weights; give --student MODEL (loaded in full precision) or drop "
                             f"--quantize")
    name = cfg.distill.teacher if command in ("compare", "sweep") else cfg.model.name
    distributed.check_placement(command, cfg.model.device_map, choose_backend(cfg.backend.kind, name, cfg.model.device))
    distributed.barrier()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .models import quiet

    quiet()
    try:
        if args.command == "sweep":
            return sweep_command(args)
        cfg = resolve_config(args)
        from . import tracking
        from .models import resolve
        from .stages.benchmark import require

        tracking.require(cfg.report_to)  # a missing package or task file fails before any model loads
        if args.command in ("run", "evaluate"):
            require(cfg)

        resolve(cfg.model.name)  # a missing model path fails here, before anything is written
        if cfg.data.template == "chat":  # a model without a chat template is refused from its tokenizer alone
            from .models import load_tokenizer
            from .prompting import resolve_template

            resolve_template(load_tokenizer(cfg.distill.teacher if args.command == "compare" else cfg.model.name),
                             "chat")
        preflight(cfg, args.command)
        run_dir = Path(args.run_dir)
        if args.command == "run":
            from .stages.pipeline import run_all

            metrics = run_all(run_dir, cfg)
            if metrics is not None:  # None on the other processes of accelerate launch: the main one reports
                print_table(metrics)
                print(f"\nreport: {run_dir / 'report.md'} and {run_dir / 'report.html'}")
        elif args.command == "ablate":
            from .experiments.ablate import run_ablate

            m = run_ablate(run_dir, cfg)
            print("\n" + "\n".join(f"- {f}" for f in m["findings"]))
            print(f"\nreport: {run_dir / 'ablate' / 'report.md'} and {run_dir / 'ablate' / 'report.html'}")
        elif args.command == "compare":
            from .distill.compare import run_compare
            from .distill.decide import render

            resolve(cfg.distill.teacher)
            if cfg.distill.student:
                resolve(cfg.distill.student)
            m = run_compare(run_dir, cfg)
            if m is None:  # another process of accelerate launch: the main one reports
                return 0
            print("\n" + render(m))
            print(f"report: {run_dir / 'report.md'} and {run_dir / 'report.html'}")
            from .stages.pipeline import track

            track(cfg, run_dir, tracking.compare_summary(m))
        else:
            run_stage(args.command, run_dir, cfg, args.redo)
        return 0
    except DepthtuneError as e:
        print(f"depthtune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("depthtune: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as e:  # an unexpected failure: one line unless --debug
        if args.debug:
            raise
        print(f"depthtune: failed: {type(e).__name__}: {e} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
