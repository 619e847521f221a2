"""Sweep files: a base config, named teachers, and axes whose product is the set of cells.

    name: example
    base: {generate: {k: 2}, train: {epochs: 2}}    # any depthtune config (run / compare keys)
    teachers: {smol: {}, smol_fewshot: {system_prompt: "..."}}
    axes:                                            # one grid, or a list of grids (their union)
      size: [24, 72]
      method: [full, {lora: {rank: [8, 32]}}, prompt]
      seed: [0, 1]

Named axes (values):
  size       training prompts drawn from the diversity pool (an integer, or all)
  diversity  one | several | all (the first 1, 2 or every suite of base.data.suites) or a list of suites
  student    self (the teacher's own model) | pruned:N (the teacher cut to N layers) | a model dir or id
  method     full | lora | lora:R | prompt | prompt:R, or {lora: {rank: [8, 32]}} for a rank sub-axis
  rank       LoRA rank (only with lora or prompt)
  targets    answers (final answers) | cot (reasoning traces) | answer_only | step_by_step
  teachers   a teacher name or a list of names (several: averaged distributions / pooled samples)
  seed       training seed and which prompts a `size` draws
Any dotted config key (distill.temperature, train.epochs, ...) is an axis too.

expand() checks everything a cell will need before anything runs: unknown axes or keys
(with the closest valid name), empty grids, sizes larger than their pool, and cells whose
settings contradict each other (a LoRA rank on full fine-tuning, a student for prompt
distillation, whose student is the teacher itself).
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import RunConfig, validate
from ..errors import DepthtuneError
from ..models import resolve
from ..typedconfig import from_dict, locate, set_key, suggest

AXES = ("size", "diversity", "student", "method", "rank", "targets", "teachers", "seed")
KEYS = ("name", "base", "teachers", "context", "axes", "keep_models", "evaluate_cdm", "resources")
METHODS = ("full", "lora", "prompt")
DIVERSITY = ("one", "several", "all")
TARGETS = ("answers", "cot", "answer_only", "step_by_step")

DEFAULT_CONTEXT = (  # prompt distillation: what the teacher sees and the student must learn to do without
    "You are a precise assistant. Reply with the final answer only: a number for arithmetic and word "
    "problems, a short name for facts. Examples:\n"
    "Q: What is 14 + 9? A: 23\n"
    "Q: What is 52 * 3? A: 156\n"
    "Q: What is 610 - 45? A: 565\n"
    "Q: Ana has 6 pencils and buys 3 boxes with 4 pencils in each. How many pencils does Ana have now? A: 18\n"
    "Q: Ben has 9 cups, buys 2 packs with 5 cups in each, then gives away 3. How many cups does Ben have left? A: 16\n"
    "Q: What is the capital of Chile? A: Santiago\n"
    "Q: What is the chemical symbol for silver? A: Ag")


@dataclass
class Teacher:
    model: str | None = None
    """HF id, model dir or .gguf; None = base distill.teacher (the embedded model by default)."""
    system_prompt: str | None = None
    """What the teacher is told before every prompt (its context)."""


@dataclass
class Sweep:
    name: str
    base: RunConfig
    teachers: dict[str, Teacher]
    context: str = DEFAULT_CONTEXT
    grids: list[dict[str, list]] = field(default_factory=list)
    keep_models: bool = False
    """Keep every cell's trained model (full fine-tuning: a full copy per cell); adapters are always kept."""
    evaluate_cdm: bool = False
    """Also score held-out answers with CDM (two more forward passes per answer)."""
    resources: dict = field(default_factory=lambda: {"cpus_per_cell": 1, "gpus_per_cell": 0})
    """What each task asks of a Ray cluster (--executor ray): cpus_per_cell, gpus_per_cell."""


@dataclass
class Cell:
    settings: dict[str, Any]
    """axis -> value, every named axis filled in (defaults where a grid leaves it out)."""
    overrides: dict[str, Any]
    """dotted config key -> value from generic axes."""

    @property
    def slug(self) -> str:
        """A readable folder-name stem: every setting, seed last."""
        parts = [f"{k}={_show(v)}" for k, v in self.settings.items() if k != "seed" and v is not None]
        parts += [f"{k}={_show(v)}" for k, v in sorted(self.overrides.items())]
        slug = re.sub(r"[^A-Za-z0-9=.,:_+-]", "_", ",".join(parts))[:120]
        return f"{slug},seed={self.settings['seed']}"

    @property
    def key(self) -> str:
        """Identity: two grids that name the same cell give it once."""
        return json.dumps([self.settings, self.overrides], sort_keys=True)

    @property
    def group(self) -> str:
        """The cell without its seed: seeds of one group are averaged in the report."""
        return ", ".join([f"{k}={_show(v)}" for k, v in self.settings.items() if k != "seed" and v is not None] +
                         [f"{k}={_show(v)}" for k, v in sorted(self.overrides.items())])


def _show(v) -> str:
    return "+".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def load_sweep(path: str | Path) -> Sweep:
    p = Path(path)
    if not p.is_file():
        raise DepthtuneError(f"sweep file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise DepthtuneError(f"sweep file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    return parse_sweep(data, default_name=p.stem)


def parse_sweep(data: Any, default_name: str = "sweep") -> Sweep:
    if not isinstance(data, dict):
        raise DepthtuneError("a sweep file is a mapping with 'base', 'teachers' and 'axes'")
    for key in data:
        if key not in KEYS:
            raise DepthtuneError(f"unknown sweep key '{key}'{suggest(key, KEYS)}; sweep keys are {', '.join(KEYS)}")
    base = validate(from_dict(RunConfig, data.get("base"), "base."))
    raw_teachers = data.get("teachers") or {"teacher": {}}
    if not isinstance(raw_teachers, dict):
        raise DepthtuneError("'teachers' maps a name to {model, system_prompt}, e.g. teachers: {smol: {}}")
    teachers = {}
    for name, spec in raw_teachers.items():
        t = from_dict(Teacher, spec, f"teachers.{name}.")
        teachers[str(name)] = dataclasses.replace(t, model=t.model if t.model is not None else base.distill.teacher)
        if teachers[str(name)].model is not None:
            resolve(teachers[str(name)].model)  # a missing model path fails here, before anything runs
    name = str(data.get("name", default_name))
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name) or name.startswith("."):
        raise DepthtuneError(f"sweep name '{name}' names its output folder: use letters, digits, '.', '_' and '-'")
    axes = data.get("axes")
    grids = axes if isinstance(axes, list) else [axes]
    if not axes or not all(isinstance(g, dict) and g for g in grids):
        raise DepthtuneError("the sweep has an empty grid: give 'axes' as a mapping of axis -> list of values "
                             "(or a list of such mappings), e.g. axes: {size: [24, 72]}")
    resources = {"cpus_per_cell": 1, "gpus_per_cell": 0, **(data.get("resources") or {})}
    unknown = [k for k in resources if k not in ("cpus_per_cell", "gpus_per_cell")]
    if unknown or not all(isinstance(v, (int, float)) and v >= 0 for v in resources.values()):
        raise DepthtuneError("sweep resources: give cpus_per_cell and gpus_per_cell as numbers >= 0"
                             + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    return Sweep(name=name, base=base, teachers=teachers,
                 context=data.get("context", DEFAULT_CONTEXT), grids=grids,
                 keep_models=bool(data.get("keep_models", False)), evaluate_cdm=bool(data.get("evaluate_cdm", False)),
                 resources=resources)


def _values(axis: str, raw) -> list:
    values = raw if isinstance(raw, list) else [raw]
    if not values:
        raise DepthtuneError(f"axis '{axis}' has no values: the grid would be empty; give at least one")
    if axis == "method":  # {lora: {rank: [8, 32]}} -> lora:8, lora:32
        out = []
        for v in values:
            if isinstance(v, dict):
                for m, sub in v.items():
                    ranks = (sub or {}).get("rank") if isinstance(sub, dict) else sub
                    if isinstance(sub, dict) and set(sub) - {"rank"}:
                        raise DepthtuneError(f"method '{m}' takes only a rank sub-axis, got {sorted(sub)}")
                    out += [f"{m}:{r}" for r in (ranks if isinstance(ranks, list) else [ranks])] if ranks else [m]
            else:
                out.append(str(v))
        return out
    return values


OWNED = {"distill.method": "method", "train.full": "method", "train.rank": "rank", "distill.targets": "targets",
         "distill.student": "student", "distill.student_layers": "student", "distill.teacher": "teachers",
         "train.seed": "seed"}


def _check_axis_name(axis: str, base: RunConfig) -> None:
    if axis in AXES:
        return
    if axis in OWNED:
        raise DepthtuneError(f"sweep axis '{axis}' is set by the named axis '{OWNED[axis]}'; use {OWNED[axis]}: [...]")
    if "." in axis:
        try:
            locate(base, axis)
            return
        except DepthtuneError as e:
            raise DepthtuneError(f"unknown sweep axis: {e}") from None
    raise DepthtuneError(f"unknown sweep axis '{axis}'{suggest(axis, AXES)}; axes are {', '.join(AXES)} "
                         f"or a dotted config key such as distill.temperature")


def defaults(sweep: Sweep) -> dict[str, Any]:
    d = sweep.base.distill
    if d.student:
        student = d.student
    else:
        student = f"pruned:{d.student_layers}" if d.student_layers else "pruned:half"
    return {"size": "all", "diversity": "all", "student": student, "method": d.method, "rank": None,
            "targets": d.targets, "teachers": [next(iter(sweep.teachers))], "seed": sweep.base.train.seed}


def expand(sweep: Sweep) -> list[Cell]:
    """The union of every grid's product, in file order, duplicates dropped; each cell checked."""
    cells, seen = [], set()
    for grid in sweep.grids:
        for axis in grid:
            _check_axis_name(axis, sweep.base)
        names = list(grid)
        for combo in itertools.product(*[_values(a, grid[a]) for a in names]):
            picked = dict(zip(names, combo))
            settings = {**defaults(sweep), **{k: v for k, v in picked.items() if k in AXES}}
            overrides = {k: v for k, v in picked.items() if k not in AXES}
            cell = normalise(Cell(settings, overrides), sweep, explicit=set(picked))
            if cell.key not in seen:
                seen.add(cell.key)
                cells.append(cell)
    if not cells:
        raise DepthtuneError("the sweep's grid is empty: no cell to run")
    return cells


def normalise(cell: Cell, sweep: Sweep, explicit: set[str]) -> Cell:
    """Canonical values for one cell, or a one-line error naming the cell and the contradiction."""
    s = cell.settings
    where = ", ".join(f"{k}={_show(s.get(k, cell.overrides.get(k)))}" for k in sorted(explicit)) or "defaults"

    def bad(msg: str):
        raise DepthtuneError(f"cell [{where}]: {msg}")

    method, _, rank = str(s["method"]).partition(":")
    if method not in METHODS:
        bad(f"unknown method '{method}'{suggest(method, METHODS)}; use full, lora or prompt")
    if rank and s["rank"] is not None:
        bad("the rank is given twice (in the method and as the rank axis); give it once")
    rank = int(rank) if rank else s["rank"]
    if method == "full" and rank is not None:
        bad("a LoRA rank with full fine-tuning contradicts itself: full fine-tuning trains every weight; "
            "put the rank under lora: method: [full, {lora: {rank: [8, 32]}}]")
    if rank is not None and (not isinstance(rank, int) or rank < 1):
        bad(f"LoRA rank must be a positive integer, got {rank!r}")
    s["method"], s["rank"] = method, (rank or sweep.base.train.rank) if method != "full" else None
    teachers = s["teachers"] if isinstance(s["teachers"], list) else [s["teachers"]]
    for t in teachers:
        if t not in sweep.teachers:
            bad(f"unknown teacher '{t}'{suggest(str(t), sweep.teachers)}; teachers are {', '.join(sweep.teachers)}")
    if not teachers:
        bad("teachers is empty; name at least one teacher")
    s["teachers"] = sorted(dict.fromkeys(teachers))
    if method == "prompt":
        if "student" in explicit and s["student"] != "self":
            bad("prompt distillation's student is the teacher model itself without its context; drop the "
                "student axis here (axes can be a list of grids, one per method)")
        if len(s["teachers"]) > 1:
            bad("prompt distillation has one teacher: the model with its context; drop the extra teachers")
        s["student"] = "self"
    if s["targets"] not in TARGETS:
        bad(f"unknown targets '{s['targets']}'{suggest(str(s['targets']), TARGETS)}")
    if not (s["seed"] is not None and isinstance(s["seed"], int)):
        bad(f"seed must be an integer, got {s['seed']!r}")
    student = str(s["student"])
    if student.startswith("pruned:"):
        n = student.split(":", 1)[1]
        if n != "half" and not (n.isdigit() and int(n) >= 1):
            bad(f"'{student}': pruned students are pruned:N with N >= 1 layers (or pruned:half)")
    elif student != "self":
        try:
            resolve(student)
        except DepthtuneError as e:
            bad(f"student: {e}")
    if isinstance(s["diversity"], str) and s["diversity"] not in DIVERSITY:
        bad(f"unknown diversity '{s['diversity']}'{suggest(s['diversity'], DIVERSITY)}; "
            f"use one, several, all or a list of suites")
    if not (s["size"] == "all" or (isinstance(s["size"], int) and s["size"] >= 1)):
        bad(f"size must be a positive number of training prompts or 'all', got {s['size']!r}")
    cfg = copy.deepcopy(sweep.base)
    for key, value in cell.overrides.items():
        set_key(cfg, key, value)
    try:
        validate(cfg)
    except DepthtuneError as e:
        bad(str(e))
    if cfg.distill.on_policy > 0 and (method == "prompt" or len(s["teachers"]) > 1 or s["targets"] not in
                                      ("answers", "cot") or cfg.distill.alpha == 0):
        bad("on-policy distillation (distill.on_policy > 0) needs one teacher scoring the student's own tokens with "
            "soft targets: methods full or lora, one teacher, targets answers or cot, distill.alpha > 0")
    return cell


def cell_config(sweep: Sweep, cell: Cell) -> RunConfig:
    """The base config with the cell's generic overrides and its seed."""
    cfg = copy.deepcopy(sweep.base)
    for key, value in cell.overrides.items():
        set_key(cfg, key, value)
    cfg.train.seed = cell.settings["seed"]
    return cfg
