"""A sweep's plan: every cell's settings, training prompts and shared teacher jobs, derived and
checked before any model is loaded (depthtune.experiments.grid parses the file; this module
decides who needs what).

A job is keyed by everything that changes its output (model, context, mode, sampling), so two
cells share it exactly when they would have produced the same samples. Teacher sampling uses
base generate.seed in every cell: seeds vary the training data drawn and the training run,
not the teacher's samples.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..config import RunConfig, side
from ..data import load_prompts
from ..distill.targets import COT_SYSTEM
from ..errors import DepthtuneError
from ..selectors import SELECTORS, resolve
from .grid import Cell, Sweep, cell_config, expand

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
    template: str = "auto"  # data.template: how prompts become ids
    taus: set = field(default_factory=lambda: {1.0})  # temperatures its cached top-k is exact at

    @property
    def key(self) -> str:
        """What changes the samples; not top-k, which is cached alongside (or backfilled) when a cell needs it.
        The template joins the digest only when it is not auto, so sweeps made before it keep their keys."""
        return f"{self.name}-{self.mode}-" + digest([self.model, self.system_prompt, self.mode, self.gen,
                                                      self.eval_tokens] + [self.template] * (self.template != "auto"))


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
                      system_prompt=system, mode=mode, template=cfg.data.template,
                      gen={"k": side(cfg, ("generate",)).generate.k, "temperature": g.temperature, "top_p": g.top_p,
                           "max_new_tokens": _tokens(cfg, mode), "seed": g.seed, "batch_size": g.batch_size},
                      topk=0, eval_tokens=cfg.evaluate.max_new_tokens if mode == "answers" else cfg.distill.cot_max_new_tokens)
            job = jobs.setdefault(job.key, job)
            if soft and len(s["teachers"]) == 1:
                job.topk = max(job.topk, cfg.distill.topk)
                job.taus.add(cfg.distill.temperature)
            job.prompts.update(prompts)
            sel = side(cfg, ("select",)).select
            job.needs_cdm |= SELECTORS[resolve(sel.selector, True)].cdm or cfg.distill.curriculum == "cdm"
            keys.append(job.key)
        ens = None
        if soft and len(keys) > 1:
            ens = "+".join(sorted(jobs[k].name for k in keys)) + "-" + digest([sorted(keys), cfg.distill.topk])
            e = ensembles.setdefault(ens, {"jobs": sorted(keys), "topk": cfg.distill.topk, "prompts": set(),
                                           "taus": {1.0}})
            e["taus"].add(cfg.distill.temperature)
            e["prompts"].update(prompts)
        first = sweep.teachers[s["teachers"][0]]
        plan_cfg = cfg.to_dict()
        name = f"{cell.slug}-" + digest([cell.settings, cell.overrides, plan_cfg, keys, dataclasses.asdict(first)])
        plans.append(CellPlan(cell, cfg, name, prompts, keys, str(s["student"]), first.model, soft, ens))
    return Plan(sweep, train, battery, plans, jobs, ensembles)


def student_key(spec: str, base: str | None) -> str:
    return spec.replace("/", "_").replace(":", "-") + "-" + digest([spec, base])


def topk_dirs(folder: Path) -> list[Path]:
    """A job's cached top-k shards: written during generation, or backfilled by a forward pass."""
    return sorted(Path(folder).glob("gen-*/topk")) + [Path(folder) / "topk-backfill"]
