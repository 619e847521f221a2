"""The command line: a thin layer over the Python API (depthtune.api) and the stage table.

    depthtune run [--model M] [--data F --prompt-field P --answer-field A] [--run-dir D] [--rounds N]
    depthtune prepare|generate|score|select|train|merge|evaluate|report --run-dir D
    depthtune compare [--teacher T] [--student S | --student-layers N]
    depthtune ablate [--label-free]
    depthtune sweep sweep.yaml [--sweep-dir D] [--dry-run] [--executor ray]
    depthtune export --run-dir D --gguf [--quant q8_0]

Every subcommand reads and writes one run directory, which it locks while it works; the resolved config
lives in <run>/config.yaml, so later stages see the settings earlier ones used. A finished stage whose
settings have changed is refused in one line (or redone with --redo), never silently reused.
"""
from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

from . import __version__
from .config import RunConfig, load_config
from .errors import DepthtuneError
from .stages import COMMANDS

FLAGS = {  # CLI flag -> config key
    "model": "model.name", "data": "data.path", "eval_data": "data.eval_path",
    "prompt_field": "data.prompt_field", "answer_field": "data.answer_field", "checker": "data.checker",
    "max_train_prompts": "data.max_train_prompts", "max_eval_prompts": "data.max_eval_prompts",
    "k": "generate.k", "threshold": "select.threshold", "rank": "train.rank", "epochs": "train.epochs",
    "full": "train.full", "selector": "select.selector", "keep": "select.keep", "quantize": "model.quantize",
    "template": "data.template", "backend": "backend.kind", "base_url": "backend.base_url",
    "served_model": "backend.model", "api_key_env": "backend.api_key_env", "report_to": "report_to",
    "lm_eval": "evaluate.lm_eval", "rounds": "rounds.n", "label_free": "ablate.label_free",
}
COMPARE_FLAGS = {
    "teacher": "distill.teacher", "student": "distill.student", "student_layers": "distill.student_layers",
    "online": "distill.online", "temperature": "distill.temperature", "priority": "distill.priority",
    "calls_per_day": "distill.calls_per_day", "method": "distill.method",
}
DEFAULT_DIRS = {"compare": "runs/compare", "ablate": "runs/ablate"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="depthtune", description="Keep a model's best answers, train a LoRA on "
                                     "them, merge it, and measure before and after; distil a teacher into a student.")
    parser.add_argument("--version", action="version", version=f"depthtune {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    helps = {"run": "all stages in order", "compare": "teacher vs student: alone, distilled, untouched",
             "ablate": "which selection trains the best adapter? one adapter per selector on equal-sized selections"}
    for name in ("run",) + COMMANDS + ("compare", "ablate"):
        p = sub.add_parser(name, help=helps.get(name, f"the {name} stage only"))
        default_dir = DEFAULT_DIRS.get(name, "runs/depthtune")
        p.add_argument("--run-dir", default=default_dir, help=f"run directory (default {default_dir})")
        p.add_argument("--config", help="YAML config (default: <run-dir>/config.yaml if present)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. --set train.rank=8")
        p.add_argument("--data", help="prompts: .jsonl, .csv, .parquet or a saved dataset dir (default: built-in suites)")
        p.add_argument("--eval-data", help="held-out prompts (default: a split of --data)")
        p.add_argument("--prompt-field", help="prompt column (default 'prompt'; chat 'messages' rows need none)")
        p.add_argument("--answer-field", help="reference-answer column (default 'answer')")
        p.add_argument("--checker", help="auto, numeric, exact, contains, or your own verifier as module:function")
        p.add_argument("--max-train-prompts", type=int)
        p.add_argument("--max-eval-prompts", type=int)
        p.add_argument("--template", choices=("auto", "chat", "raw"), help="prompt format: the model's chat "
                       "template, or the raw text (completion-style data); default auto")
        p.add_argument("--quantize", choices=("4bit", "8bit"), help="load the base in 4 or 8 bits (bitsandbytes); "
                       "training becomes QLoRA")
        p.add_argument("--backend", choices=("auto", "local", "openai", "llama-server"), help="where answers are "
                       "sampled: in this process (local), an OpenAI-compatible server, or llama.cpp's server")
        p.add_argument("--base-url", action="append", help="an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1; "
                       "give it several times to spread requests over replicas")
        p.add_argument("--served-model", help="the model's name on the server (default: its only model)")
        p.add_argument("--api-key-env", help="environment variable that holds the server's API key")
        p.add_argument("--report-to", help="tracker for training and stage metrics: tensorboard, mlflow, trackio, wandb")
        p.add_argument("--redo", action="store_true", help="run again what is finished: this stage (stage "
                       "commands), or the stages whose settings changed (run, ablate)")
        if name != "compare":  # compare names its models and CDM line with --teacher, --student and distill.*
            p.add_argument("--model", help="HF model id, model directory or .gguf file (default: embedded SmolLM2)")
            p.add_argument("--k", type=int, help="samples per training prompt")
            p.add_argument("--threshold", type=float, help="an absolute line on the selector's score (CDM 0-100); "
                           "default: a relative one, the top select.top_share of eligible samples")
            p.add_argument("--rank", type=int, help="LoRA rank")
            p.add_argument("--epochs", type=float)
            p.add_argument("--full", action="store_true", default=None, help="full fine-tuning instead of LoRA")
        if name in ("run", "select", "ablate"):
            p.add_argument("--selector", help="how samples are chosen: correct, majority, majority_cdm, cdm, logprob, "
                           "random, or one CDM part (see `depthtune/stages/select.py`)")
            p.add_argument("--keep", type=int, help="keep exactly this many samples, the selector's best")
        if name in ("run", "evaluate"):
            p.add_argument("--lm-eval", nargs="+", metavar="TASK", help="lm-evaluation-harness tasks (or task "
                           "YAML files) on the base and tuned model")
        if name == "run":
            p.add_argument("--rounds", type=int, help="sample, select and train again from the tuned model, N "
                           "rounds in all (STaR / ReST-EM); each round in <run-dir>/round-R")
        if name == "ablate":
            p.add_argument("--label-free", action="store_true", default=None, help="select without reference "
                           "answers (they are used for evaluation only): cdm, logprob, majority, majority_cdm, "
                           "random, and correct as the labelled upper bound")
            p.add_argument("--executor", choices=("local", "ray"), default="local", help="run the cells one after "
                           "another here, or as tasks on a Ray cluster")
            p.add_argument("--address", help="Ray cluster to join (auto, or ray://host:10001; default: a local one)")
        if name == "compare":
            p.add_argument("--teacher", help="teacher model (default: the embedded SmolLM2-135M-Instruct)")
            p.add_argument("--student", help="student model (default: see distill.student)")
            p.add_argument("--student-layers", type=int, help="layers a pruned student keeps")
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
    p.add_argument("--executor", choices=("local", "ray"), default="local", help="run the cells one after another "
                   "here, or as tasks on a Ray cluster")
    p.add_argument("--address", help="Ray cluster to join (auto, or ray://host:10001; default: a local one)")
    p = sub.add_parser("export", help="the tuned model of a run as a GGUF file (llama.cpp, Ollama)")
    p.add_argument("--run-dir", default="runs/depthtune", help="run directory (default runs/depthtune)")
    p.add_argument("--gguf", action="store_true", required=True, help="write <run-dir>/export/model-<quant>.gguf")
    p.add_argument("--quant", default="q8_0", choices=("f16", "q8_0", "q4_k_m", "f32"),
                   help="GGUF weight type (default q8_0)")
    return parser


def resolve_config(args) -> RunConfig:
    run_dir = Path(args.run_dir)
    path = args.config or (run_dir / "config.yaml" if (run_dir / "config.yaml").is_file() else None)
    flags = {key: getattr(args, flag, None) for flag, key in {**FLAGS, **COMPARE_FLAGS}.items()}
    urls = getattr(args, "base_url", None)
    flags["backend.base_url"] = (urls[0] if len(urls) == 1 else urls) if urls else None
    return load_config(path, args.set, **flags)


def print_table(metrics: dict) -> None:
    from .reporting import PERCENT, ROWS, change, fmt

    b, a, d = metrics["before"], metrics["after"], metrics["deltas"]
    print(f"\n{'metric':<28}{'before':>10}{'after':>10}   change (95% interval)")
    for key, label, pattern in ROWS:
        if b.get(key) is None and a.get(key) is None:
            continue
        print(f"{label.format(line=metrics['deep_line']):<28}{fmt(b.get(key), pattern):>10}"
              f"{fmt(a.get(key), pattern):>10}   {change(d.get(key), 100 if key in PERCENT else 1)}")
    print("\n" + metrics["summary_line"])


def preflight(cfg: RunConfig, command: str) -> None:
    """What can be refused before any model loads or anything is written: a missing model, a tracker or
    bitsandbytes that is not installed, an unknown lm-eval task, a placement that cannot work, a verifier
    that does not import; under accelerate launch the process group is made here."""
    from . import distributed, tracking
    from .backends.llama_server import choose_backend
    from .models import require_bitsandbytes, resolve

    tracking.require(cfg.report_to)
    if command in ("run", "evaluate"):
        from .stages.benchmark import require

        require(cfg)
    require_bitsandbytes(cfg.model.quantize)
    if command == "compare":
        resolve(cfg.distill.teacher)
        if cfg.distill.student and cfg.distill.student not in ("self", "context"):
            resolve(cfg.distill.student)
    else:
        resolve(cfg.model.name)
    if command == "compare" and cfg.model.quantize and not cfg.distill.student:
        raise DepthtuneError(f"--quantize {cfg.model.quantize} loads the teacher quantised, and a pruned student "
                             f"would copy those weights; give --student MODEL (loaded in full precision) or drop "
                             f"--quantize")
    if cfg.data.template == "chat":  # a model without a chat template is refused from its tokenizer alone
        from .models import load_tokenizer
        from .prompting import resolve_template

        resolve_template(load_tokenizer(cfg.distill.teacher if command == "compare" else cfg.model.name), "chat")
    from .verifiers import load_checker

    load_checker(cfg.data.checker)
    name = cfg.distill.teacher if command in ("compare", "sweep") else cfg.model.name
    distributed.check_placement(trains=command in ("run", "train", "compare", "ablate", "sweep"),
                                device_map=cfg.model.device_map,
                                backend=choose_backend(cfg.backend.kind, name, cfg.model.device),
                                samples=command in ("run", "generate", "compare", "ablate"), command=command)
    distributed.barrier()


def stage_command(command: str, run_dir: Path, cfg: RunConfig, redo: bool) -> None:
    from . import api

    m = api.stages(command, cfg, run_dir=run_dir, redo=redo)
    if m.get("lm-eval"):
        from .stages.benchmark import render, summary_of

        print("\n".join(render(summary_of(m["lm-eval"]))))
    if command == "report" or (command == "evaluate" and m.get("report")):
        print_table(m["report"])
    print(f"[{command}] done -> {run_dir / ('report.md' if command == 'report' else command)}")


def command(args) -> int:
    from . import api

    if args.command == "sweep":
        from .experiments.grid import load_sweep

        sweep = load_sweep(args.file)
        if args.dry_run:
            print("\n".join(api.sweep_plan(sweep)))
            return 0
        preflight(sweep.base, "sweep")
        folder = Path(args.sweep_dir or Path("runs") / "sweeps" / sweep.name)
        m = api.sweep(sweep, folder, sweep_text=Path(args.file).read_text(), executor=args.executor,
                      address=args.address)
        if m is None:  # another process of accelerate launch: the main one reports
            return 0
        print("\n" + "\n".join(f"- {f}" for f in m.findings).replace("**", ""))
        print(f"\n{len(m.done)} of {m.cells} cells done, {len(m.failed)} failed; "
              f"report: {folder / 'sweep_report.md'} and {folder / 'sweep_report.html'}")
        return 1 if m.failed else 0
    run_dir = Path(args.run_dir)
    if args.command == "export":
        out = api.export_gguf(run_dir, args.quant)
        print(f"wrote {out}")
        return 0
    cfg = resolve_config(args)
    preflight(cfg, args.command)
    if args.command == "run":
        m = api.run(cfg, run_dir, redo=args.redo)
        if m is not None:  # None on the other processes of accelerate launch: the main one reports
            print_table(m.metrics)
            for line in m.rounds_lines:
                print(line)
            print(f"\nreport: {m.report}")
    elif args.command == "ablate":
        m = api.ablate(cfg, run_dir, executor=args.executor, address=args.address, redo=args.redo)
        if m is not None:
            print("\n" + "\n".join(f"- {f}" for f in m.findings))
            print(f"\nreport: {run_dir / 'ablate' / 'report.md'} and {run_dir / 'ablate' / 'report.html'}")
    elif args.command == "compare":
        from .distill.decide import render

        m = api.compare(cfg, run_dir)
        if m is None:  # another process of accelerate launch: the main one reports
            return 0
        print("\n" + render(m.metrics))
        print(f"report: {run_dir / 'report.md'} and {run_dir / 'report.html'}")
    else:
        stage_command(args.command, run_dir, cfg, args.redo)
    return 0


def disk_full(e: BaseException | None) -> bool:
    """ENOSPC, however the library that hit it reported it (safetensors raises a plain Exception)."""
    while e is not None:
        if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left on device" in str(e) \
                or "os error 28" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .models import quiet

    quiet()
    try:
        return command(args)
    except DepthtuneError as e:
        print(f"depthtune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("depthtune: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as e:  # the disk filled up, the folder became read-only: the machine, not the input
        if args.debug:
            raise
        if not isinstance(e, OSError) and not disk_full(e):  # an unexpected failure: one line unless --debug
            print(f"depthtune: failed: {type(e).__name__}: {e} (rerun with --debug for the traceback)", file=sys.stderr)
            return 1
        where = f" writing {e.filename}" if getattr(e, "filename", None) else ""
        if disk_full(e):
            print(f"depthtune: error: no space left on the device{where}; free some space and run the same "
                  f"command again: finished work is kept, half-written files are not used", file=sys.stderr)
        elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            print(f"depthtune: error: cannot write{where} ({e.strerror}); use a --run-dir you can write to",
                  file=sys.stderr)
        else:
            print(f"depthtune: failed: {type(e).__name__}: {e} (rerun with --debug for the traceback)",
                  file=sys.stderr)
            return 1
        return 2


if __name__ == "__main__":
    sys.exit(main())
