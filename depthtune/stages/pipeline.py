"""Running stages: `depthtune run` (every stage of depthtune.stages.STAGES in order), a stage command
(`depthtune score`, ...), and the first stages of compare and ablate, over one run directory.

A finished stage is skipped, unless the settings its output depends on changed since it ran: then the
command stops, in one line, naming the stage and the old and new values, before anything is written
(config.yaml included). With --redo the stale stages are run again instead: the first one and every
stage made from it (their fingerprints chain through `needs`), and the log says so.

The base model is loaded once and reused by generate, score and the base evaluation; training then
wraps it, and the merged model is evaluated without a reload.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path

from .. import artifacts, distributed, models, tracking
from ..backends.llama_server import LlamaServer, choose_backend
from ..backends.local import LocalSampler
from ..config import RunConfig, dump_config
from ..errors import DepthtuneError
from . import BY_NAME, NOT_SETTINGS, STAGES, Stage


class Session:
    """The models of one command, loaded lazily and shared by its stages."""

    def __init__(self, cfg: RunConfig, log=print, saved: RunConfig | None = None):
        self.cfg, self.log = cfg, log
        self.saved = saved or cfg  # the config.yaml of the run directory (compare: the user's, not the teacher's)
        self._model = self._tok = self._remote = self._server = None
        self.trained = self.merged = None  # (model, tok) made by train and merge in this process
        self.run_dir: Path | None = None  # set by run_stages: where tuned() finds the merged model

    def tokenizer(self):
        if self._tok is None:
            self._tok = models.load_tokenizer(self.cfg.model.name)
        return self._tok

    def base(self):
        """-> (model, tok): a clean base model (reloaded if training changed the one in memory)."""
        if self._model is None:
            self.release()  # one model in memory at a time
            t = time.perf_counter()
            self.log(f"loading {self.cfg.model.name or models.EMBEDDED_NAME} ...")
            self._model = models.from_config(self.cfg.model.name, self.cfg.model)
            self.log(f"  loaded in {time.perf_counter() - t:.1f} s")
        return self._model, self.tokenizer()

    def take_base(self):
        """Hand the model to train over to be changed (training); the next base() reloads. That is the base,
        or train.base when it names another model (rounds that restart from the first base)."""
        other = self.cfg.train.base
        if other is not None and other != self.cfg.model.name:
            self.release()
            return models.from_config(other, self.cfg.model), models.load_tokenizer(other)
        model, tok = self.base()
        self._model = None
        return model, tok

    def trained_by(self, result):
        """Keep what train.run made (manifest, model) for merge; -> the manifest."""
        manifest, model = result
        self.trained = (model, self.tokenizer())
        return manifest

    def merged_by(self, result):
        """Keep the merged model for the tuned evaluation; -> the manifest."""
        manifest, model = result
        self.trained = None
        self.merged = (model.eval(), self.tokenizer()) if model is not None and not self.cfg.model.quantize else None
        return manifest

    def load(self, name: str | None):
        """A base to merge an adapter into: in full precision even when the runs' base is quantised."""
        return models.from_config(name, self.cfg.model, full_precision=True), models.load_tokenizer(name)

    def tuned(self, run_dir: Path | None = None):
        """-> (model, tok): the merged model of this process, else loaded from the run's merge/ (a QLoRA
        run's tuned model quantised as its base was: before and after alike)."""
        if self.merged is not None:
            return self.merged
        self.release()
        m = artifacts.read_manifest(Path(self.run_dir) / "merge", "merge")
        path = str(Path(self.run_dir) / m["model_dir"])
        self.merged = models.from_config(path, self.cfg.model), models.load_tokenizer(path)
        return self.merged

    def sampler(self):
        """Where this command's answers come from (cfg.backend, "auto" resolved by choose_backend): the
        base model in this process, an OpenAI-compatible server, or llama.cpp's server started on the
        model's GGUF (stopped by close())."""
        b, m = self.cfg.backend, self.cfg.model
        kind = choose_backend(b.kind, m.name, m.device)
        if kind == "local":
            return LocalSampler(*self.base(), template=self.cfg.data.template, batch_size=self.cfg.generate.batch_size)
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

    def served(self):
        """The server's sampler when held-out answers should come from it too (backend.evaluate), else None."""
        b = self.cfg.backend
        return self.sampler() if b.kind != "local" and b.evaluate else None

    def served_tuned(self, run_dir: Path):
        """With backend.evaluate on llama-server: the tuned model exported to GGUF in the base's weight type
        and served the same way, so before and after are answered by one engine (else None: in-process)."""
        b = self.cfg.backend
        if not b.evaluate or choose_backend(b.kind, self.cfg.model.name, self.cfg.model.device) != "llama-server":
            return None
        from .export import export, quant_of

        gguf = export(run_dir, quant_of(models.gguf_path(self.cfg.model.name)), log=self.log)
        self._tuned_server = LlamaServer(gguf, log=self.log, parallel=b.concurrency,
                                         ctx=b.concurrency * (2048 + self.cfg.evaluate.max_new_tokens))
        from ..backends.openai import OpenAISampler

        url = self._tuned_server.start()
        return OpenAISampler(dataclasses.replace(b, kind="llama-server", base_url=url), self.tokenizer(), log=self.log,
                             template=self.cfg.data.template)

    def release(self) -> None:
        """Drop every model this session holds (the next base() or tuned() loads again)."""
        self._model = self.trained = self.merged = None
        import gc

        gc.collect()

    def close(self) -> None:
        """Stop a server this session started; drop the models."""
        if self._remote is not None:
            self._remote.close()
        for server in (self._server, getattr(self, "_tuned_server", None)):
            if server is not None:
                server.stop()
        self._remote = self._server = self._tuned_server = None
        self.release()


# -- fingerprints --------------------------------------------------------------------------------------


def settings_of(stage: Stage, cfg: RunConfig) -> dict:
    """{dotted key: value} of every setting the stage's output depends on."""
    flat = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        else:
            flat[prefix] = value

    for section, values in cfg.to_dict().items():
        walk(section, values)
    wanted = lambda key: any(key == s or key.startswith(s + ".") for s in stage.settings)  # noqa: E731
    return {k: v for k, v in flat.items() if wanted(k) and k not in NOT_SETTINGS}


def recorded(run_dir: Path, stage: Stage) -> dict | None:
    """The stage's marker (None if it has not finished)."""
    if not stage.marker or not (Path(run_dir) / stage.marker).exists():
        return None
    return artifacts.read_json(Path(run_dir) / stage.marker)


def fingerprint(run_dir: Path, stage: Stage, settings: dict) -> str:
    """Hash of the stage's settings and of the fingerprints of the stages it read."""
    upstream = [(recorded(run_dir, BY_NAME[n]) or {}).get("fingerprint") for n in stage.needs]
    text = json.dumps([settings, upstream], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stamp(run_dir: Path, stage: Stage, cfg: RunConfig) -> None:
    """Record in the stage's marker the settings it ran with and its fingerprint."""
    if not stage.marker or not (Path(run_dir) / stage.marker).exists():
        return
    settings = settings_of(stage, cfg)
    data = artifacts.read_json(Path(run_dir) / stage.marker)
    artifacts.write_json(Path(run_dir) / stage.marker,
                         {**data, "settings": settings, "fingerprint": fingerprint(run_dir, stage, settings)})


def _show(value) -> str:
    return "null" if value is None else json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def staleness(run_dir: Path, stage: Stage, cfg: RunConfig) -> str | None:
    """Why a finished stage's output does not belong to these settings, or None (fresh, or not finished).
    A marker without a fingerprint (written before fingerprints were kept) is taken as fresh."""
    mark = recorded(run_dir, stage)
    if not mark or "fingerprint" not in mark:
        return None
    now = settings_of(stage, cfg)
    if fingerprint(run_dir, stage, now) == mark["fingerprint"]:
        return None
    before = mark.get("settings", {})
    changed = [f"{k} was {_show(before.get(k))}, now {_show(now.get(k))}" for k in sorted(set(now) | set(before))
               if before.get(k) != now.get(k)]
    if changed:
        return "; ".join(changed[:4]) + ("; ..." if len(changed) > 4 else "")
    made = [n for n in stage.needs if recorded(run_dir, BY_NAME[n])]
    return f"it was made from an earlier {' / '.join(made) or 'input'} output"


def check_fresh(run_dir: Path, cfg: RunConfig, stages: list[Stage], redo: bool, command: str) -> None:
    """Refuse, in one line, to reuse a finished stage whose settings changed (unless --redo)."""
    if redo:
        return
    for stage in stages:
        why = staleness(run_dir, stage, cfg)
        if why:
            raise DepthtuneError(f"the {stage.name} stage in {run_dir} was made under other settings ({why}); "
                                 f"rerun with --redo to redo {stage.name} and the stages made from it, or use a "
                                 f"new --run-dir (the finished stages are unchanged)")


class _Redo:
    """Move a stage's outputs aside before it runs again; put them back if the redo fails."""

    def __init__(self, run_dir: Path, stage: Stage):
        self.run_dir, self.stage = Path(run_dir), stage
        self.backup = self.run_dir / f".{stage.name}.before-redo"
        self.moved: list[tuple[Path, Path]] = []

    def __enter__(self):
        shutil.rmtree(self.backup, ignore_errors=True)
        for pattern in self.stage.outputs:
            for path in sorted(self.run_dir.glob(pattern)):
                dest = self.backup / path.relative_to(self.run_dir)
                dest.parent.mkdir(parents=True, exist_ok=True)
                path.rename(dest)
                self.moved.append((path, dest))
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is not None:  # a failed redo loses nothing: the old output goes back
            for path, dest in self.moved:
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
                dest.rename(path)
        shutil.rmtree(self.backup, ignore_errors=True)
        return False


def run_stage(stage: Stage, run_dir: Path, cfg: RunConfig, session: Session, *, redo: bool = False,
              timings: dict | None = None):
    """One stage: skipped when finished and fresh, redone when stale or asked (redo), else run; under
    accelerate launch main_process_only stages run on the main process while the others wait."""
    run_dir = Path(run_dir)
    log = session.log
    distributed.barrier()  # every process sees the same run dir before deciding
    done = recorded(run_dir, stage) is not None
    stale = done and staleness(run_dir, stage, cfg)
    if done and not stale and not redo:
        log(f"[{stage.name}] already finished, skipped")
        return artifacts.read_json(run_dir / stage.marker)
    for need in stage.needs:
        if recorded(run_dir, BY_NAME[need]) is None and BY_NAME[need].marker:
            cmd = BY_NAME[need].command
            raise DepthtuneError(f"the {cmd} stage has not run in {run_dir}: run `depthtune {cmd} --run-dir "
                                 f"{run_dir}` (or `depthtune run`) first")
    log(f"[{stage.name}]" + (f" redone: {stale}" if stale else " redone" if done else ""))
    distributed.barrier()
    start = time.perf_counter()
    redoing = _Redo(run_dir, stage) if done and distributed.is_main() else None
    with redoing or contextlib.nullcontext():
        fn = lambda: stage.run(run_dir, cfg, session)  # noqa: E731
        out = distributed.on_main(fn) if stage.main_process_only else fn()
    if distributed.is_main() and stage.marker:
        stamp(run_dir, stage, cfg)
        # the settings the run directory's stages were made with, for the commands that follow
        artifacts.write_text(run_dir / "config.yaml", dump_config(session.saved))
    if timings is not None:
        timings[stage.name] = round(time.perf_counter() - start, 2)
    return out


def step(name: str, done: bool, fn, log=print, timings: dict | None = None):
    """A phase of a command that is not a stage of the table (compare's students, an ablation's cells): run
    fn unless it is finished; record its wall seconds in `timings`."""
    if done:
        log(f"[{name}] already finished, skipped")
        return None
    log(f"[{name}]")
    distributed.barrier()  # under accelerate launch: every process has made its `done` check before any writes
    start = time.perf_counter()
    out = fn()
    if timings is not None:
        timings[name] = round(time.perf_counter() - start, 2)
    return out


def run_stages(run_dir: Path, cfg: RunConfig, session: Session, names: list[str] | None = None, *,
               redo: bool = False, redo_names: list[str] = (), timings: dict | None = None) -> dict:
    """The named stages (default: every stage `run` includes) in table order; -> {name: result}.
    redo: stale stages are run again instead of refused; redo_names: these are run again in any case."""
    run_dir = Path(run_dir)
    session.run_dir = run_dir
    chosen = [s for s in STAGES if (names is None or s.name in names) and (s.when is None or s.when(cfg))]
    check_fresh(run_dir, cfg, [s for s in chosen if s.name not in redo_names], redo, "run")
    out = {}
    for stage in chosen:
        out[stage.name] = run_stage(stage, run_dir, cfg, session, redo=stage.name in redo_names, timings=timings)
        if stage.name == "prepare":
            session.log(plan_line(cfg, out["prepare"]))
    return out


def run_all(run_dir: Path, cfg: RunConfig, log=print, redo: bool = False) -> dict | None:
    """Every stage, in order; -> the report's metrics (None on the other processes of accelerate launch)."""
    session = Session(cfg, log)
    timings: dict = {}
    try:
        results = run_stages(run_dir, cfg, session, redo=redo, timings=timings)
    finally:
        session.close()
    metrics = results.get("report")
    if distributed.is_main():  # the others return None: the main process reports
        artifacts.write_json(Path(run_dir) / "timings.json", timings)
        track(cfg, Path(run_dir), tracking.run_summary(metrics), log)
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
