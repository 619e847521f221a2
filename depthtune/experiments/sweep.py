"""`depthtune sweep sweep.yaml`: every cell of a grid, teacher work shared, resumable.

plan (prompts, each cell's training prompts, the shared teacher jobs; every check)
  -> teacher jobs (generate [+ top-k] [+ CDM], evaluate on the battery; once per set-up)
  -> ensembles (averaged distributions, for cells with several teachers)
  -> untouched students (battery) -> cells (train, evaluate; experiments.cell) -> report

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
import os
import time
from pathlib import Path

from .. import artifacts, distributed, models
from ..backends.local import LocalSampler
from ..config import RunConfig
from ..distill import ensemble
from ..errors import DepthtuneError
from ..stages import evaluate, generate
from ..stages.score import judge, score_rows
from . import executor
from .grid import Sweep
from .plan import Job, Plan, make_plan, student_key, topk_dirs


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

        from ..data import load_prompts
        from ..distill.students import prompt_batches, prune_layers

        teacher, tok = self.get(base)
        if spec == "self":
            return copy.deepcopy(teacher), tok
        if spec.startswith("pruned:"):
            n = spec.split(":", 1)[1]
            batches = None
            if self.cfg.distill.prune == "block":  # measured on the prompts the sweep draws from
                batches = prompt_batches(tok, load_prompts(self.cfg.data)[0], self.cfg.data.system_prompt,
                                         self.cfg.data.template)
            return prune_layers(teacher, teacher.config.num_hidden_layers // 2 if n == "half" else int(n),
                                batches), tok
        return (models.load_model(spec, self.cfg.model.dtype, self.cfg.model.device), models.load_tokenizer(spec))


def run_job(folder: Path, job: Job, plan: Plan, mdl: Models, log) -> list[dict]:
    """Generate (only prompts not yet sampled), judge, score if needed, evaluate; -> all samples."""
    folder.mkdir(parents=True, exist_ok=True)
    artifacts.write_json(folder / "job.json", {**dataclasses.asdict(job), "prompts": sorted(job.prompts),
                                                      "taus": sorted(job.taus)})
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
        sampler = LocalSampler(model, tok, job.template, batch_size=g["batch_size"])
        new, _ = generate.sample_all(sampler, missing, rnd / "samples.partial.jsonl", k=g["k"],
                                     temperature=g["temperature"], top_p=g["top_p"], max_new_tokens=g["max_new_tokens"],
                                     batch_size=g["batch_size"], seed=g["seed"], system_prompt=job.system_prompt,
                                     topk=job.topk, taus=tuple(sorted(job.taus)), progress=log)
        rows += [{**r, "correct": judge(r), "cdm": None} for r in new]
        artifacts.write_jsonl(samples, rows)
        artifacts.write_json(rnd / "done.json", {"prompts": len(missing), "samples": len(new), "topk": job.topk})
        (rnd / "samples.partial.jsonl").unlink(missing_ok=True)
    if job.topk:
        backfill_topk(folder, job, rows, mdl, log)
    if job.needs_cdm:
        model, tok = mdl.get(job.model)
        scored = score_rows(model, tok, rows, dataclasses.replace(plan.sweep.base.score, cdm=True), folder / "scores.jsonl",
                            progress=log)  # a cell ranks by it: computed whatever score.cdm says
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


def backfill_topk(folder: Path, job: Job, rows: list[dict], mdl: Models, log) -> None:
    """Samples generated before a cell needed soft targets get their top-k rows from one forward pass."""
    from ..teacher_cache import cached_ids

    have = set().union(*(cached_ids(d) for d in topk_dirs(folder)))
    missing = [r for r in rows if r["sample_id"] not in have]
    if missing:
        model, tok = mdl.get(job.model)
        log(f"[teacher {job.key}] top-{job.topk} rows for {len(missing)} earlier samples")
        ensemble.build(folder / "topk-backfill", [(model, tok, job.system_prompt)], missing, job.topk,
                       model.get_output_embeddings().weight.shape[0], log=log, template=job.template,
                       taus=tuple(sorted(job.taus)))


def run_ensemble(folder: Path, spec: dict, plan: Plan, samples: dict[str, list[dict]], mdl: Models, log) -> None:
    """Averaged top-k rows for every pooled sample of the ensemble's prompts not yet cached."""
    from ..teacher_cache import cached_ids

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
    ensemble.build(folder / "topk", teachers, rows, spec["topk"], vocab, log=log,
                   template=plan.jobs[spec["jobs"][0]].template,  # one sweep, one template
                   taus=tuple(sorted(spec["taus"])))
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
        if distributed.is_main():
            artifacts.write_json(self.folder / "progress.json", {"done": self.done, "failed": self.failed, "left": left,
                                                             "running": running, "total": self.total})
        return text + (f" | running {running}" if running else "")


def timed(folder: Path, phase: str, key: str, fn):
    """Run fn and append its wall seconds to <sweep>/timings.jsonl (work done in this process only)."""
    start = time.perf_counter()
    out = fn()
    if distributed.is_main():
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


def job_rows(folder: Path, job: Job) -> list[dict]:
    """A finished teacher job's samples from disk, with their CDM when the job scored them (as run_job
    returns them): what a cell reads when it runs in another process."""
    rows = artifacts.read_jsonl(Path(folder) / "samples.jsonl")
    if job.needs_cdm:
        cdm = {r["sample_id"]: r["cdm"] for r in artifacts.read_jsonl(Path(folder) / "scores.jsonl")}
        rows = [{**r, "cdm": cdm.get(r["sample_id"])} for r in rows]
    return rows


def record_failure(cell_dir: Path, cp, e: Exception) -> dict:
    """A cell's one-line error, kept in error.json (the report lists it); -> {"error": message}."""
    message = str(e).splitlines()[0] if str(e) else type(e).__name__
    if not isinstance(e, DepthtuneError):
        message = f"{type(e).__name__}: {message}"
    if distributed.is_main():
        artifacts.write_json(cell_dir / "error.json", {"error": message, "settings": cp.cell.settings})
    return {"error": message}


def attempt_cell(cell_dir: Path, cp, plan: Plan, samples: dict, mdl: Models, folder: Path, log) -> dict:
    """One cell, whichever executor runs it: its result, or its failure recorded (Ctrl-C still stops it)."""
    from .cell import run_cell

    try:
        result = timed(folder, "cell", cp.dir_name, lambda: run_cell(cell_dir, cp, plan, samples, mdl, folder, log))
        (cell_dir / "error.json").unlink(missing_ok=True)
        return result
    except Exception as e:  # recorded with its message; the sweep goes on
        out = record_failure(cell_dir, cp, e)
        log(f"  cell failed: {out['error']}")
        return out


def run_sweep(sweep: Sweep, folder: Path, log=print, sweep_text: str | None = None, executor: str = "local",
              address: str | None = None) -> dict:
    from .report import write_report

    folder = Path(folder)
    plan = make_plan(sweep)  # every check, before anything is written
    folder.mkdir(parents=True, exist_ok=True)
    main = distributed.is_main()  # under accelerate launch: main writes and does the shared teacher work
    if sweep_text is not None and main:
        artifacts.write_text(folder / "sweep.yaml", sweep_text)
    if main:
        artifacts.write_jsonl(folder / "prompts" / "train.jsonl", plan.train)
        artifacts.write_jsonl(folder / "prompts" / "eval.jsonl", plan.battery)
    log(f"sweep '{sweep.name}': {len(plan.cells)} cells, {len(plan.jobs)} teacher jobs, "
        f"{len(plan.ensembles)} ensembles, battery of {len(plan.battery)} held-out prompts")
    if executor == "ray":
        if distributed.world()[1] > 1:
            raise DepthtuneError("--executor ray spreads the cells itself; run it without accelerate launch")
        _on_ray(sweep, plan, folder, log, address)
        return write_report(folder, plan)
    mdl = Models(sweep.base, log)
    samples, failed_jobs = distributed.share(
        distributed.on_main(lambda: timed(folder, "shared", "all", lambda: shared_work(plan, folder, mdl, log))))
    progress = Progress(len(plan.cells), folder, log)
    for i, cp in enumerate(plan.cells):
        cell_dir, name = folder / "cells" / cp.dir_name, f"{cp.cell.group}, seed={cp.cell.settings['seed']}"
        distributed.barrier()  # every process looks for result.json before any of them writes it
        if (cell_dir / "result.json").exists():
            progress.done += 1
            log(f"[cell {i + 1}/{len(plan.cells)}] already finished, skipped: {name}")
            continue
        blocked = [failed_jobs[k] for k in cp.jobs + [cp.ensemble, student_key(cp.student, cp.base_model)]
                   if k in failed_jobs]
        log(f"[cell {i + 1}/{len(plan.cells)}] {name}")
        log("  " + progress.line(running=f"cell {i + 1}"))
        start = time.perf_counter()
        if blocked:
            out = record_failure(cell_dir, cp, DepthtuneError(f"shared teacher work failed: {blocked[0]}"))
            log(f"  cell failed: {out['error']}")
        else:
            out = attempt_cell(cell_dir, cp, plan, samples, mdl, folder, log)
        if out.get("error"):
            progress.failed += 1
        else:
            progress.done += 1
            progress.times.append(time.perf_counter() - start)
        gc.collect()
        log("  " + progress.line())
    return distributed.on_main(lambda: write_report(folder, plan))  # None on the other processes


# -- on Ray (--executor ray; see experiments.executor) --------------------------------------------------


def shared_task(sweep: Sweep, folder: str, kind: str, key, *_deps) -> dict:
    """One teacher job, ensemble or untouched student as a Ray task (the deps are the jobs it reads)."""
    plan, folder_, mdl, quiet = make_plan(sweep), Path(folder), Models(sweep.base, lambda *a: None), lambda *a: None
    try:
        if kind == "job":
            run_job(folder_ / "teachers" / key, plan.jobs[key], plan, mdl, quiet)
        elif kind == "ensemble":
            samples = {k: job_rows(folder_ / "teachers" / k, plan.jobs[k]) for k in plan.ensembles[key]["jobs"]}
            run_ensemble(folder_ / "ensembles" / key, plan.ensembles[key], plan, samples, mdl, quiet)
        else:
            spec, base = key
            untouched(folder_ / "students" / student_key(spec, base), spec, base, plan, mdl, quiet)
    except DepthtuneError as e:
        return {"error": str(e)}
    return {}


def cell_task(sweep: Sweep, folder: str, dir_name: str, *deps) -> dict:
    """One cell as a Ray task, started once the shared work it reads (its deps) has finished."""
    blocked = [d["error"] for d in deps if d.get("error")]
    plan, folder_ = make_plan(sweep), Path(folder)
    cp = next(c for c in plan.cells if c.dir_name == dir_name)
    cell_dir = folder_ / "cells" / dir_name
    if blocked:
        return record_failure(cell_dir, cp, DepthtuneError(f"shared teacher work failed: {blocked[0]}"))
    with artifacts.DirLock(cell_dir, lambda *a: None, "cell directory"):
        artifacts.write_text(cell_dir / "worker.pid", str(os.getpid()))  # for whoever watches the workers
        samples = {k: job_rows(folder_ / "teachers" / k, plan.jobs[k]) for k in cp.jobs}
        return attempt_cell(cell_dir, cp, plan, samples, Models(sweep.base, lambda *a: None), folder_, lambda *a: None)


def _on_ray(sweep: Sweep, plan: Plan, folder: Path, log, address: str | None) -> None:
    """Every unfinished cell as a Ray task after the shared work it reads."""
    folder = Path(folder)
    with executor.cluster(address, log) as ray:
        executor.check_shared(ray, folder)
        shared, cell = (executor.remote(ray, f, sweep.resources) for f in (shared_task, cell_task))
        jobs = {k: shared.remote(sweep, str(folder), "job", k) for k in plan.jobs}
        ensembles = {k: shared.remote(sweep, str(folder), "ensemble", k, *[jobs[j] for j in spec["jobs"]])
                     for k, spec in plan.ensembles.items()}
        students = {student_key(cp.student, cp.base_model): (cp.student, cp.base_model) for cp in plan.cells}
        studs = {k: shared.remote(sweep, str(folder), "student", v) for k, v in students.items()}
        todo = [cp for cp in plan.cells if not (folder / "cells" / cp.dir_name / "result.json").exists()]
        log(f"ray: {len(plan.jobs)} teacher jobs, {len(plan.ensembles)} ensembles, {len(students)} untouched students, "
            f"then {len(todo)} cells ({len(plan.cells) - len(todo)} already finished)")
        refs = {cp.dir_name: cell.remote(sweep, str(folder), cp.dir_name, *[jobs[k] for k in cp.jobs],
                                         *([ensembles[cp.ensemble]] if cp.ensemble else []),
                                         studs[student_key(cp.student, cp.base_model)]) for cp in todo}
        executor.wait_all(ray, refs, log, done_before=len(plan.cells) - len(todo))
