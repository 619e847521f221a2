"""`depthtune run`: the stages in order over one run directory, each skipped when finished.

prepare -> generate -> score -> evaluate[base] -> select -> train -> merge -> evaluate[tuned]
        -> lm-eval (with --lm-eval) -> report, whose summary goes to the --report-to trackers

The base model is loaded once and reused by generate, score and the base evaluation;
training then wraps it, and the merged model is evaluated without a reload.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from .. import artifacts, distributed, models, tracking
from ..backends.llama_server import LlamaServer, choose_backend
from ..backends.local import LocalSampler
from ..config import RunConfig, dump_config
from ..data import load_prompts
from . import benchmark, evaluate, generate, merge, report, score, select, train


class Session:
    """Lazily loaded base model and tokenizer, shared by the stages of one command."""

    def __init__(self, cfg: RunConfig, log=print):
        self.cfg, self.log = cfg, log
        self._model = self._tok = self._remote = self._server = None

    def tokenizer(self):
        if self._tok is None:
            self._tok = models.load_tokenizer(self.cfg.model.name)
        return self._tok

    def base(self):
        """-> (model, tok): a clean base model (reloaded if training changed the one in memory)."""
        if self._model is None:
            t = time.perf_counter()
            self.log(f"loading {self.cfg.model.name or models.EMBEDDED_NAME} ...")
            self._model = models.from_config(self.cfg.model.name, self.cfg.model)
            self.log(f"  loaded in {time.perf_counter() - t:.1f} s")
        return self._model, self.tokenizer()

    def take_base(self):
        """Hand the base model over to be changed (training); the next base() reloads."""
        model, tok = self.base()
        self._model = None
        return model, tok

    def load(self, name: str | None):
        """A base to merge an adapter into: in full precision even when the runs' base is quantised."""
        return models.from_config(name, self.cfg.model, full_precision=True), models.load_tokenizer(name)

    def sampler(self):
        """Where this command's answers come from (cfg.backend, "auto" resolved by choose_backend): the
        base model in this process, an OpenAI-compatible server, or llama.cpp's server started on the
        model's GGUF (stopped by close())."""
        b, m = self.cfg.backend, self.cfg.model
        kind = choose_backend(b.kind, m.name, m.device)
        if kind == "local":
            return LocalSampler(*self.base(), template=self.cfg.data.template)
        if self._remote is None:
            if kind == "llama-server":
                slot = 2048 + max(self.cfg.generate.max_new_tokens, self.cfg.evaluate.max_new_tokens)
                self._server = LlamaServer(models.gguf_path(m.name), log=self.log, parallel=b.concurrency,
                                           ctx=b.concurrency * slot)
                b = dataclasses.replace(b, base_url=self._server.start())
            from ..backends.openai import OpenAISampler

            self._remote = OpenAISampler(dataclasses.replace(b, kind=kind), self.tokenizer(), log=self.log,
                                         template=self.cfg.data.template)
        return self._remote

    def close(self) -> None:
        """Stop a server this session started; drop the model."""
        if self._remote is not None:
            self._remote.close()
        if self._server is not None:
            self._server.stop()
        self._model = self._remote = self._server = None


def prepare(run_dir: Path, cfg: RunConfig) -> dict:
    """Write the train / held-out prompt lists (once) and the resolved config."""
    run_dir = Path(run_dir)
    stage_dir = run_dir / "prompts"
    if not distributed.is_main():  # under accelerate launch the main process writes, the others read
        return distributed.others_read(stage_dir, "prompts")
    if artifacts.is_done(stage_dir):
        manifest = artifacts.read_json(artifacts.manifest_path(stage_dir))
    else:
        train_items, held = load_prompts(cfg.data)  # fails before anything is written
        artifacts.write_jsonl(stage_dir / "train.jsonl", train_items)
        artifacts.write_jsonl(stage_dir / "eval.jsonl", held)
        manifest = artifacts.write_manifest(stage_dir, "prompts", cfg.to_dict(), train=len(train_items),
                                            eval=len(held), with_answers=sum(p["answer"] is not None for p in train_items))
    artifacts.write_text(run_dir / "config.yaml", dump_config(cfg))
    return distributed.main_wrote(manifest)


def tuned_model(run_dir: Path, session: Session):
    m = artifacts.read_manifest(Path(run_dir) / "merge", "merge")
    path = str(Path(run_dir) / m["model_dir"])
    # a QLoRA run's tuned model is evaluated quantised as its base was: before and after alike
    return models.from_config(path, session.cfg.model), models.load_tokenizer(path)


def served(session: Session):
    """The server's sampler when held-out answers should come from it too (backend.evaluate), else None."""
    b = session.cfg.backend
    return session.sampler() if b.kind != "local" and b.evaluate else None


def step(name: str, done: bool, fn, log=print, timings: dict | None = None):
    """Run one stage unless it is finished; record its wall seconds in `timings`."""
    if done:
        log(f"[{name}] already finished, skipped")
        return None
    log(f"[{name}]")
    # under accelerate launch: every process has made its `done` check before any of them writes
    distributed.barrier()
    start = time.perf_counter()
    out = fn()
    if timings is not None:
        timings[name] = round(time.perf_counter() - start, 2)
    return out


def run_all(run_dir: Path, cfg: RunConfig, log=print) -> dict:
    session = Session(cfg, log)
    try:
        return _run_all(Path(run_dir), cfg, session, log)
    finally:
        session.close()


def _run_all(run_dir: Path, cfg: RunConfig, session: Session, log) -> dict:
    timings = {}

    def stage(name: str, done: bool, fn):
        # under accelerate launch, every process runs these (each its share); the main process the rest
        shared = name in ("prepare", "generate", "score", "evaluate-base", "train", "evaluate-tuned")
        return step(name, done, fn if shared else lambda: distributed.on_main(fn), log, timings)

    def train_base():
        base, tok = session.take_base()  # training changes it in place
        return train.run(run_dir, cfg, base, tok)[1], tok

    log(plan_line(cfg, stage("prepare", False, lambda: prepare(run_dir, cfg))))
    stage("generate", artifacts.is_done(run_dir / "generate"), lambda: generate.run(run_dir, cfg, session.sampler()))
    stage("score", artifacts.is_done(run_dir / "score"), lambda: score.run(run_dir, cfg, *session.base()))
    stage("evaluate-base", (run_dir / "evaluate" / "base.json").exists(),
          lambda: evaluate.evaluate_model(run_dir, cfg, "base", *session.base(), log=log, sampler=served(session)))
    stage("select", artifacts.is_done(run_dir / "select"), lambda: select.run(run_dir, cfg))
    trained = stage("train", artifacts.is_done(run_dir / "train"), train_base)
    merged = stage("merge", artifacts.is_done(run_dir / "merge"), lambda: merge.run(run_dir, cfg, session.load, trained))
    tuned = merged[1] if merged and not cfg.model.quantize else None  # QLoRA: reloaded quantised
    if not (run_dir / "evaluate" / "tuned.json").exists():
        session._model = None  # free the base before the tuned model is loaded
        pair = (tuned.eval(), session.tokenizer()) if tuned is not None else tuned_model(run_dir, session)
        stage("evaluate-tuned", False, lambda: evaluate.evaluate_model(run_dir, cfg, "tuned", *pair, log=log))
    distributed.on_main(lambda: evaluate.finish(run_dir, cfg))
    if cfg.evaluate.lm_eval:
        trained = merged = tuned = pair = session._model = None  # lm-eval loads each model from its directory
        stage("lm-eval", False, lambda: benchmark.run(run_dir, cfg, log))
    metrics = stage("report", False, lambda: report.run(run_dir))
    if distributed.is_main():  # the others return None: the main process reports
        artifacts.write_json(run_dir / "timings.json", timings)
        track(cfg, run_dir, tracking.run_summary(metrics), log)
    return metrics


def plan_line(cfg: RunConfig, prompts: dict) -> str:
    """The run's size and the options that change it, logged first: a big file should not surprise."""
    g, e = cfg.generate, cfg.evaluate
    return (f"plan: {prompts['train']} training prompts x {g.k} samples of up to {g.max_new_tokens} tokens, "
            f"{prompts['eval']} held-out prompts answered by base and tuned in up to {e.max_new_tokens} tokens; "
            f"shorten with --max-train-prompts N, --max-eval-prompts N, --k N, --set generate.max_new_tokens=N, "
            f"--set evaluate.max_new_tokens=N")


def track(cfg: RunConfig, run_dir: Path, metrics: dict, log=print) -> None:
    """Summary metrics to the trackers of --report-to (nothing without one)."""
    where = tracking.log_summary(cfg.report_to, run_dir, metrics)
    if where:
        log(f"summary metrics logged to {'; '.join(where)}")
