"""`depthtune sweep sweep.yaml`: every cell of a grid, teacher work shared, resumable.

plan (prompts, each cell's training prompts, the shared teacher jobs; every check)
  -> teacher jobs (generate [+ top-k] [+ CDM], evaluate on the battery; once per set-up)
  -> ensembles (averaged distributions, for cells with several teachers)
  -> untouched students (battery) -> cells (train, evaluate; depthtune.cell) -> report

Layout of <sweep dir>:
  sweep.yaml                     the file as given (copied on every start)
  prompts/{train,eval}.jsonl     the training pool and the battery
  teachers/<job>/                job.json, gen-NNN/ (one generation round: partial rows, topk/),
                                 samples.jsonl, scores.jsonl (CDM, when a cell needs it),
                                 evaluate/battery.{jsonl,json}
  ensembles/<key>/topk/          averaged top-k shards
  students/<key>/evaluate/       the untouched student on the battery
  cells/<cell>/                  cell.json, train/ (checkpoints while running), adapter/ (LoRA),
                                 evaluate/battery.*, result.json (done) or error.json (failed)
  sweep.json, sweep_report.md, sweep_report.html, plots/

A job is keyed by everything that changes its output (model, context, mode, sampling, top-k),
so two cells share it exactly when they would have produced the same samples. Teacher
sampling uses base generate.seed in every cell: seeds vary the training data drawn and the
training run, not the teacher's samples.
"""
from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import artifacts, ensemble, evaluate, generate, models
from .config import RunConfig
from .data import load_prompts
from .errors import DepthtuneError
from .grid import Cell, Sweep, cell_config, expand
from .score import judge, score_rows
from .targets import COT_SYSTEM

SOFT_TARGETS = ("answers", "cot")


def digest(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:8]


@dataclass
class Job:
    """One teacher set-up's shared work: samples for every training prompt some cell needs."""
    name: str
    model: str | None
    system_prompt: str | None
    mode: str  # answers | cot (the teacher reasons before answering)
    gen: dict
    topk: int
    eval_tokens: int
    prompts: set = field(default_factory=set)
    needs_cdm: bool = False

    @property
    def key(self) -> str:
        """What changes the samples; not top-k, which is cached alongside (or backfilled) when a cell needs it."""
        return f"{self.name}-{self.mode}-" + digest([self.model, self.system_prompt, self.mode, self.gen,
                                                      self.eval_tokens])


@dataclass
class CellPlan:
    cell: Cell
    cfg: RunConfig
    dir_name: str
    prompts: list[str]
    jobs: list[str]
    student: str  # self | pruned:N | model name; built from the first teacher's model
    base_model: str | None
    soft: bool
    ensemble: str | None = None


@dataclass
class Plan:
    sweep: Sweep
    train: list[dict]
    battery: list[dict]
    cells: list[CellPlan]
    jobs: dict[str, Job]
    ensembles: dict[str, dict]


def pool(train: list[dict], diversity, suites: list[str]) -> list[dict]:
    if isinstance(diversity, list):
        unknown = [s for s in diversity if s not in suites]
        if unknown:
            raise DepthtuneError(f"diversity names suites {unknown} that the training data lacks ({', '.join(suites)})")
        chosen = diversity
    else:
        chosen = {"one": suites[:1], "several": suites[:2], "all": suites}[diversity]
    return [it for it in train if it["suite"] in chosen]


def draw(items: list[dict], size, seed: int) -> list[str]:
    """`size` prompt ids spread evenly over suites; for one seed a smaller size is a subset of a larger."""
    if size == "all":
        return [it["id"] for it in items]
    by_suite: dict[str, list[str]] = {}
    for it in items:
        by_suite.setdefault(it["suite"], []).append(it["id"])
    for ids in by_suite.values():
        random.Random(f"draw-{seed}").shuffle(ids)
    queues, out = list(by_suite.values()), []
    while len(out) < size:
        for q in queues:
            if q and len(out) < size:
                out.append(q.pop(0))
    return out


def _tokens(cfg: RunConfig, mode: str) -> int:
    return cfg.distill.cot_max_new_tokens if mode == "cot" else cfg.generate.max_new_tokens


def make_plan(sweep: Sweep) -> Plan:
    """Everything checked and derived before any model is loaded."""
    cells = expand(sweep)
    train, battery = load_prompts(sweep.base.data)
    suites = list(dict.fromkeys(it["suite"] for it in train))
    jobs: dict[str, Job] = {}
    plans, ensembles = [], {}
    for cell in cells:
        s, cfg = cell.settings, cell_config(sweep, cell)
        where = cell.group
        items = pool(train, s["diversity"], suites)
        if s["size"] != "all" and s["size"] > len(items):
            raise DepthtuneError(f"cell [{where}]: size {s['size']} asks for more training prompts than the "
                                 f"'{s['diversity']}' pool holds ({len(items)})")
        prompts = draw(items, s["size"], s["seed"])
        mode = "answers" if s["targets"] == "answers" else "cot"
        soft = cfg.distill.alpha > 0 and s["targets"] in SOFT_TARGETS
        keys = []
        for name in s["teachers"]:
            t = sweep.teachers[name]
            system = sweep.context if s["method"] == "prompt" else t.system_prompt
            if mode == "cot":
                system = f"{system}\n\n{COT_SYSTEM}" if system else COT_SYSTEM
            g = cfg.generate
            job = Job(name=f"{name}+context" if s["method"] == "prompt" else name, model=t.model,
                      system_prompt=system, mode=mode,
                      gen={"k": cfg.distill.k, "temperature": g.temperature, "top_p": g.top_p,
                           "max_new_tokens": _tokens(cfg, mode), "seed": g.seed, "batch_size": g.batch_size},
                      topk=0, eval_tokens=cfg.evaluate.max_new_tokens if mode == "answers" else cfg.distill.cot_max_new_tokens)
            job = jobs.setdefault(job.key, job)
            if soft and len(s["teachers"]) == 1:
                job.topk = max(job.topk, cfg.distill.topk)
            job.prompts.update(prompts)
            job.needs_cdm |= cfg.distill.threshold > 0 or cfg.distill.curriculum == "cdm"
            keys.append(job.key)
        ens = None
        if soft and len(keys) > 1:
            ens = "+".join(sorted(jobs[k].name for k in keys)) + "-" + digest([sorted(keys), cfg.distill.topk])
            e = ensembles.setdefault(ens, {"jobs": sorted(keys), "topk": cfg.distill.topk, "prompts": set()})
            e["prompts"].update(prompts)
        first = sweep.teachers[s["teachers"][0]]
        plan_cfg = cfg.to_dict()
        name = f"{cell.slug}-" + digest([cell.settings, cell.overrides, plan_cfg, keys, dataclasses.asdict(first)])
        plans.append(CellPlan(cell, cfg, name, prompts, keys, str(s["student"]), first.model, soft, ens))
    return Plan(sweep, train, battery, plans, jobs, ensembles)


class Models:
    """Teacher models loaded once per sweep; students copied or pruned from them per cell."""

    def __init__(self, cfg: RunConfig, log):
        self.cfg, self.log, self._models, self._toks = cfg, log, {}, {}

    def get(self, name: str | None):
        if name not in self._models:
            t = time.perf_counter()
            self.log(f"loading {name or models.EMBEDDED_NAME} ...")
            self._models[name] = models.load_model(name, self.cfg.model.dtype, self.cfg.model.device)
            self.tokenizer(name)
            self.log(f"  loaded in {time.perf_counter() - t:.1f} s")
        return self._models[name], self._toks[name]

    def tokenizer(self, name: str | None):
        if name not in self._toks:
            self._toks[name] = models.load_tokenizer(name)
        return self._toks[name]

    def student(self, spec: str, base: str | None):
        """A fresh, trainable copy of the untouched student."""
        import copy

        from .students import prune_layers

        teacher, tok = self.get(base)
        if spec == "self":
            return copy.deepcopy(teacher), tok
        if spec.startswith("pruned:"):
            n = spec.split(":", 1)[1]
            return prune_layers(teacher, teacher.config.num_hidden_layers // 2 if n == "half" else int(n)), tok
        return (models.load_model(spec, self.cfg.model.dtype, self.cfg.model.device), models.load_tokenizer(spec))


def run_job(folder: Path, job: Job, plan: Plan, mdl: Models, log) -> list[dict]:
    """Generate (only prompts not yet sampled), judge, score if needed, evaluate; -> all samples."""
    folder.mkdir(parents=True, exist_ok=True)
    artifacts.write_json(folder / "job.json", {**dataclasses.asdict(job), "prompts": sorted(job.prompts)})
    samples = folder / "samples.jsonl"
    rows = artifacts.read_jsonl(samples) if samples.exists() else []
    have = {r["prompt_id"] for r in rows}
    missing = [it for it in plan.train if it["id"] in job.prompts and it["id"] not in have]
    if missing:
        rounds = sorted(folder.glob("gen-*"))
        rnd = folder / f"gen-{len([r for r in rounds if (r / 'done.json').exists()]):03d}"
        rnd.mkdir(parents=True, exist_ok=True)
        model, tok = mdl.get(job.model)
        g = job.gen
        log(f"[teacher {job.key}] sampling {len(missing)} prompts x {g['k']}")
        new, _ = generate.sample_all(model, tok, missing, rnd / "samples.partial.jsonl", k=g["k"],
                                     temperature=g["temperature"], top_p=g["top_p"], max_new_tokens=g["max_new_tokens"],
                                     batch_size=g["batch_size"], seed=g["seed"], system_prompt=job.system_prompt,
                                     topk=job.topk, progress=log)
        rows += [{**r, "correct": judge(r), "cdm": None} for r in new]
        artifacts.write_jsonl(samples, rows)
        artifacts.write_json(rnd / "done.json", {"prompts": len(missing), "samples": len(new), "topk": job.topk})
        (rnd / "samples.partial.jsonl").unlink(missing_ok=True)
    if job.topk:
        backfill_topk(folder, job, rows, mdl, log)
    if job.needs_cdm:
        model, tok = mdl.get(job.model)
        scored = score_rows(model, tok, rows, plan.sweep.base.score, folder / "scores.jsonl", progress=log)
        rows = [{**r, "cdm": s["cdm"]} for r, s in zip(rows, scored)]
    if not (folder / "evaluate" / "battery.json").exists():
        model, tok = mdl.get(job.model)
        cfg = dataclasses.replace(plan.sweep.base)
        cfg.data = dataclasses.replace(cfg.data, system_prompt=job.system_prompt)
        cfg.evaluate = dataclasses.replace(cfg.evaluate, max_new_tokens=job.eval_tokens)
        log(f"[teacher {job.key}] battery")
        evaluate.evaluate_model(folder, cfg, "battery", model, tok, log=log, items=plan.battery,
                                cdm=plan.sweep.evaluate_cdm)
    return rows


def topk_dirs(folder: Path) -> list[Path]:
    """A job's cached top-k shards: written during generation, or backfilled by a forward pass."""
    return sorted(Path(folder).glob("gen-*/topk")) + [Path(folder) / "topk-backfill"]


def backfill_topk(folder: Path, job: Job, rows: list[dict], mdl: Models, log) -> None:
    """Samples generated before a cell needed soft targets get their top-k rows from one forward pass."""
    from .teacher_cache import cached_ids

    have = set().union(*(cached_ids(d) for d in topk_dirs(folder)))
    missing = [r for r in rows if r["sample_id"] not in have]
    if missing:
        model, tok = mdl.get(job.model)
        log(f"[teacher {job.key}] top-{job.topk} rows for {len(missing)} earlier samples")
        ensemble.build(folder / "topk-backfill", [(model, tok, job.system_prompt)], missing, job.topk,
                       model.get_output_embeddings().weight.shape[0], log=log)


def run_ensemble(folder: Path, spec: dict, plan: Plan, samples: dict[str, list[dict]], mdl: Models, log) -> None:
    """Averaged top-k rows for every pooled sample of the ensemble's prompts not yet cached."""
    from .teacher_cache import cached_ids

    have = cached_ids(folder / "topk")
    rows = [{**r, "sample_id": f"{k}/{r['sample_id']}"} for k in spec["jobs"] for r in samples[k]
            if r["prompt_id"] in spec["prompts"]]
    rows = [r for r in rows if r["sample_id"] not in have]
    if not rows:
        return
    teachers = []
    for k in spec["jobs"]:
        job = plan.jobs[k]
        teachers.append((*mdl.get(job.model), job.system_prompt))
    if any(t[1].get_vocab() != teachers[0][1].get_vocab() for t in teachers):
        raise DepthtuneError("several teachers' distributions can be averaged only over one vocabulary; these "
                             "teachers' tokenizers differ: use sequence-level distillation (distill.alpha: 0)")
    log(f"[ensemble {folder.name}] averaging {len(teachers)} teachers over {len(rows)} samples")
    vocab = teachers[0][0].get_output_embeddings().weight.shape[0]
    ensemble.build(folder / "topk", teachers, rows, spec["topk"], vocab, log=log)
    artifacts.write_manifest(folder, "ensemble", {}, jobs=spec["jobs"], samples=len(have) + len(rows),
                             topk=spec["topk"])


def untouched(folder: Path, spec: str, base: str | None, plan: Plan, mdl: Models, log) -> None:
    if (folder / "evaluate" / "battery.json").exists():
        return
    model, tok = mdl.student(spec, base)
    artifacts.write_json(folder / "student.json", {"student": spec, "base": base, "params": models.count_params(model)})
    log(f"[student {spec}] battery, untrained")
    evaluate.evaluate_model(folder, plan.sweep.base, "battery", model.eval(), tok, log=log, items=plan.battery,
                            cdm=plan.sweep.evaluate_cdm)


def student_key(spec: str, base: str | None) -> str:
    return spec.replace("/", "_").replace(":", "-") + "-" + digest([spec, base])


class Progress:
    def __init__(self, total: int, folder: Path, log):
        self.total, self.folder, self.log = total, folder, log
        self.done = self.failed = self.skipped = 0
        self.times: list[float] = []

    def line(self, running: str | None = None) -> str:
        left = self.total - self.done - self.failed
        eta = ""
        if self.times and left:
            eta = f", ~{sum(self.times) / len(self.times) * left / 60:.0f} min left"
        text = f"cells: {self.done} done, {self.failed} failed, {left} to go{eta}"
        artifacts.write_json(self.folder / "progress.json", {"done": self.done, "failed": self.failed, "left": left,
                                                             "running": running, "total": self.total})
        return text + (f" | running {running}" if running else "")


def timed(folder: Path, phase: str, key: str, fn):
    """Run fn and append its wall seconds to <sweep>/timings.jsonl (work done in this process only)."""
    start = time.perf_counter()
    out = fn()
    artifacts.append_jsonl(folder / "timings.jsonl", [{"phase": phase, "key": key,
                                                       "seconds": round(time.perf_counter() - start, 2)}])
    return out


def shared_work(plan: Plan, folder: Path, mdl: Models, log) -> tuple[dict, dict]:
    """Teacher jobs, ensembles, untouched students -> (samples per job, {failed key: error})."""
    samples, failed = {}, {}
    for key, job in plan.jobs.items():
        try:
            samples[key] = timed(folder, "teacher", key, lambda: run_job(folder / "teachers" / key, job, plan, mdl, log))
        except DepthtuneError as e:
            failed[key] = str(e)
            log(f"[teacher {key}] failed: {e}")
    for key, spec in plan.ensembles.items():
        if not any(k in failed for k in spec["jobs"]):
            try:
                timed(folder, "ensemble", key,
                      lambda: run_ensemble(folder / "ensembles" / key, spec, plan, samples, mdl, log))
            except DepthtuneError as e:
                failed[key] = str(e)
    students = {student_key(cp.student, cp.base_model): (cp.student, cp.base_model) for cp in plan.cells}
    for key, (spec, base) in students.items():
        try:
            timed(folder, "student", key, lambda: untouched(folder / "students" / key, spec, base, plan, mdl, log))
        except DepthtuneError as e:
            failed[key] = str(e)
    return samples, failed


def run_sweep(sweep: Sweep, folder: Path, log=print, sweep_text: str | None = None) -> dict:
    from .cell import run_cell
    from .sweep_report import write_report

    folder = Path(folder)
    plan = make_plan(sweep)  # every check, before anything is written
    folder.mkdir(parents=True, exist_ok=True)
    if sweep_text is not None:
        artifacts.write_text(folder / "sweep.yaml", sweep_text)
    artifacts.write_jsonl(folder / "prompts" / "train.jsonl", plan.train)
    artifacts.write_jsonl(folder / "prompts" / "eval.jsonl", plan.battery)
    log(f"sweep '{sweep.name}': {len(plan.cells)} cells, {len(plan.jobs)} teacher jobs, "
        f"{len(plan.ensembles)} ensembles, battery of {len(plan.battery)} held-out prompts")
    mdl = Models(sweep.base, log)
    samples, failed_jobs = timed(folder, "shared", "all", lambda: shared_work(plan, folder, mdl, log))
    progress = Progress(len(plan.cells), folder, log)
    for i, cp in enumerate(plan.cells):
        cell_dir, name = folder / "cells" / cp.dir_name, f"{cp.cell.group}, seed={cp.cell.settings['seed']}"
        if (cell_dir / "result.json").exists():
            progress.done += 1
            log(f"[cell {i + 1}/{len(plan.cells)}] already finished, skipped: {name}")
            continue
        blocked = [failed_jobs[k] for k in cp.jobs + [cp.ensemble, student_key(cp.student, cp.base_model)]
                   if k in failed_jobs]
        log(f"[cell {i + 1}/{len(plan.cells)}] {name}")
        log("  " + progress.line(running=f"cell {i + 1}"))
        start = time.perf_counter()
        try:
            if blocked:
                raise DepthtuneError(f"shared teacher work failed: {blocked[0]}")
            timed(folder, "cell", cp.dir_name, lambda: run_cell(cell_dir, cp, plan, samples, mdl, folder, log))
            progress.done += 1
            progress.times.append(time.perf_counter() - start)
            (cell_dir / "error.json").unlink(missing_ok=True)
        except Exception as e:  # recorded with its message; the sweep goes on (Ctrl-C still stops it)
            progress.failed += 1
            message = str(e).splitlines()[0] if str(e) else type(e).__name__
            if not isinstance(e, DepthtuneError):
                message = f"{type(e).__name__}: {message}"
            artifacts.write_json(cell_dir / "error.json", {"error": message, "settings": cp.cell.settings})
            log(f"  cell failed: {message}")
        gc.collect()
        log("  " + progress.line())
    return write_report(folder, plan)
