"""Typed run configuration: one dataclass per stage, YAML plus `--set stage.key=value`.

The resolved config is written to <run>/config.yaml and into every stage manifest,
so each artifact carries the settings it was made with.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import DepthtuneError


@dataclass
class ModelConfig:
    name: str | None = None
    """HF model id, local model directory, or .gguf file; None = the embedded SmolLM2-135M-Instruct."""
    dtype: str = "auto"
    """auto (bf16 on a GPU that has it, else fp32), float32, bfloat16 or float16."""
    device: str = "auto"
    """auto (cuda if present), cpu or cuda."""


@dataclass
class DataConfig:
    path: str | None = None
    """JSONL, CSV, Parquet or a saved HF dataset directory; None = the built-in suites."""
    prompt_field: str = "prompt"
    """Column holding the prompt (ignored when the rows carry chat `messages`)."""
    answer_field: str | None = "answer"
    """Column holding the reference answer; optional, a missing column means no answers."""
    checker: str = "auto"
    """auto (numeric when the reference is a number, else exact), numeric, exact or contains."""
    eval_path: str | None = None
    """Held-out prompts in a separate file; None = split `eval_fraction` off `path`."""
    eval_fraction: float = 0.25
    """Share of a user file held out for evaluation when no eval_path is given."""
    suites: list[str] = field(default_factory=lambda: ["arithmetic", "word_problems", "facts"])
    """Built-in suites used when path is None."""
    max_train_prompts: int | None = None
    max_eval_prompts: int | None = None
    system_prompt: str | None = None
    """System message put before every prompt; None keeps the model's chat-template default."""
    seed: int = 0
    """Seed of the train/held-out split of a user file."""


@dataclass
class GenerateConfig:
    k: int = 4
    """Samples per training prompt."""
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 48
    batch_size: int = 32
    """Sequences per generation batch (prompts x k)."""
    seed: int = 0
    topk: int = 0
    """Store the model's top-k next-token log-probs per generated token (cached teacher); 0 = off."""


@dataclass
class ScoreConfig:
    noise: float = 0.3
    """Std of the Gaussian noise on input embeddings, relative to their RMS (basin-escape test)."""
    batch_size: int = 8
    seed: int = 0
    weights: dict[str, float] = field(default_factory=lambda: {
        "entropy_collapse": 0.4, "attention_sparsification": 0.2, "basin_resistance": 0.4})


@dataclass
class SelectConfig:
    threshold: float = 80.0
    """Keep samples with CDM >= threshold (0-100)."""
    require_correct: bool = True
    """Where references exist, keep only correct samples."""
    max_per_prompt: int | None = None
    dedup: bool = True
    """Drop samples whose completion text repeats another kept one for the same prompt."""


@dataclass
class TrainConfig:
    full: bool = False
    """Fine-tune all weights instead of a LoRA adapter."""
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Any = "all-linear"
    """PEFT target modules: 'all-linear' or a list of module names."""
    epochs: float = 3.0
    learning_rate: float | None = None
    """None = 2e-4 for LoRA, 2e-5 for full fine-tuning."""
    batch_size: int = 8
    grad_accum: int = 1
    save_steps: int = 10
    """Checkpoint every this many optimiser steps (resume point after an interruption)."""
    seed: int = 0


@dataclass
class DistillConfig:
    teacher: str | None = None
    """Teacher model (HF id, dir or .gguf); None = the embedded SmolLM2-135M-Instruct."""
    student: str | None = None
    """Student model sharing the teacher's tokenizer; None = the teacher pruned to student_layers."""
    student_layers: int | None = None
    """Decoder layers a pruned student keeps (first, last, evenly between); None = half the teacher's."""
    method: str = "full"
    """full or lora: how the student is trained (a pruned student needs full fine-tuning to heal)."""
    kind: str = "forward_kl"
    """forward_kl, reverse_kl or jsd (generalised JSD with beta)."""
    temperature: float = 2.0
    alpha: float = 0.5
    """Weight of the soft-target term; 1 - alpha goes to cross-entropy on the targets."""
    beta: float = 0.5
    """JSD interpolation: 0 = forward KL, 1 = reverse KL."""
    online: bool = False
    """Run the teacher beside the student on every batch instead of reading cached top-k rows."""
    topk: int = 20
    """Teacher log-probs cached per token when not online."""
    chunk: int = 512
    """Tokens per chunk of the loss (memory vs speed)."""
    threshold: float = 0.0
    """CDM line for the teacher's samples used as targets (0 = the correctness filter alone)."""
    k: int = 4
    """Teacher samples per training prompt."""
    learning_rate: float = 1e-4
    """Learning rate of both trained students (alone and distilled, so they stay comparable); a pruned
    student needs more than the 2e-5 usual for full fine-tuning to heal."""
    targets: str = "answers"
    """answers (sequence-level), cot (rationale + answer), answer_only or step_by_step; see depthtune.distill.targets."""
    curriculum: str = "none"
    """Order of the distilled student's examples: none (shuffled), cdm (deepest teacher samples
    first) or level (the suite's difficulty level, easy first); kept in that order every epoch."""
    cot_max_new_tokens: int = 128
    """Token budget of a reasoning teacher's answers, and of a reasoning student's at evaluation."""
    priority: str = "accuracy"
    """What the deployment decision optimises: accuracy, latency or budget (training time)."""
    calls_per_day: int = 100_000
    """Expected answers per day, for the compute-cost line of the decision."""


@dataclass
class EvaluateConfig:
    max_new_tokens: int = 48
    temperature: float = 0.0
    """0 = greedy decoding (the model's default behaviour)."""
    batch_size: int = 16
    deep_line: float = 78.0
    """A held-out sample with CDM >= deep_line counts as deep (deep_rate)."""
    seed: int = 0


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _suggest(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def from_dict(cls, data: dict | None, where: str = ""):
    """Build dataclass `cls` from a dict, refusing unknown keys with a suggestion."""
    data = data or {}
    if not isinstance(data, dict):
        raise DepthtuneError(f"config section '{where or 'top level'}' must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise DepthtuneError(f"unknown config key '{where}{key}'{_suggest(key, fields)}")
        sub = fields[key].default_factory if fields[key].default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub):
            value = from_dict(sub, value, f"{where}{key}.")
        kwargs[key] = value
    return cls(**kwargs)


def set_key(cfg: RunConfig, dotted: str, value: Any) -> None:
    """Set `section.key` on a RunConfig, refusing unknown names with a suggestion."""
    parts = dotted.split(".")
    obj = cfg
    for i, part in enumerate(parts):
        names = {f.name for f in dataclasses.fields(obj)}
        if part not in names:
            raise DepthtuneError(f"unknown config key '{'.'.join(parts[:i + 1])}'{_suggest(part, names)}")
        if i == len(parts) - 1:
            setattr(obj, part, value)
        else:
            obj = getattr(obj, part)
            if not dataclasses.is_dataclass(obj):
                raise DepthtuneError(f"'{'.'.join(parts[:i + 1])}' is a value, not a section")


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise DepthtuneError(f"--set expects key=value, got '{text}'")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def validate(cfg: RunConfig) -> RunConfig:
    """Check ranges once, up front, with messages a user can act on."""
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise DepthtuneError(msg)

    need(0 <= cfg.select.threshold <= 100, f"threshold {cfg.select.threshold} is outside 0-100; pick a CDM line such as 80")
    need(0 <= cfg.evaluate.deep_line <= 100, f"deep line {cfg.evaluate.deep_line} is outside 0-100")
    need(cfg.generate.k >= 1, "generate.k must be at least 1")
    need(cfg.generate.temperature > 0, "generate.temperature must be > 0 (sampling needs it); use evaluate for greedy")
    need(0 < cfg.generate.top_p <= 1, "generate.top_p must be in (0, 1]")
    need(cfg.generate.max_new_tokens >= 1 and cfg.evaluate.max_new_tokens >= 1, "max_new_tokens must be at least 1")
    need(cfg.evaluate.temperature >= 0, "evaluate.temperature must be >= 0 (0 = greedy)")
    need(cfg.generate.topk >= 0, "generate.topk must be >= 0 (0 = no cached teacher logits)")
    need(cfg.score.noise >= 0, "score.noise must be >= 0")
    need(set(cfg.score.weights) == set(ScoreConfig().weights) and all(v >= 0 for v in cfg.score.weights.values())
         and sum(cfg.score.weights.values()) > 0,
         f"score.weights needs non-negative weights for exactly {sorted(ScoreConfig().weights)}")
    need(0 < cfg.data.eval_fraction < 1, "data.eval_fraction must be between 0 and 1")
    need(cfg.data.checker in ("auto", "numeric", "exact", "contains"),
         f"unknown checker '{cfg.data.checker}'; use auto, numeric, exact or contains")
    need(cfg.train.rank >= 1 and cfg.train.epochs > 0 and cfg.train.batch_size >= 1, "train.rank, epochs and batch_size must be positive")
    need(0 <= cfg.train.dropout < 1, "train.dropout must be in [0, 1)")
    need(cfg.model.dtype in ("auto", "float32", "bfloat16", "float16"), f"unknown dtype '{cfg.model.dtype}'")
    d = cfg.distill
    need(d.temperature > 0, f"distill.temperature must be > 0, got {d.temperature}")
    need(0 <= d.alpha <= 1 and 0 <= d.beta <= 1, "distill.alpha and distill.beta must be in [0, 1]")
    need(d.kind in ("forward_kl", "reverse_kl", "jsd"), f"unknown distill.kind '{d.kind}'; use forward_kl, reverse_kl or jsd")
    need(d.method in ("full", "lora"), f"unknown distill.method '{d.method}'; use full or lora")
    need(d.student_layers is None or d.student_layers >= 1,
         f"pruning to {d.student_layers} layers leaves no layer; keep at least 1 (--student-layers)")
    need(d.targets in ("answers", "cot", "answer_only", "step_by_step"),
         f"unknown distill.targets '{d.targets}'; use answers, cot, answer_only or step_by_step")
    need(d.curriculum in ("none", "cdm", "level"), f"unknown curriculum '{d.curriculum}'; use none, cdm or level")
    need(d.priority in ("accuracy", "latency", "budget"), f"unknown priority '{d.priority}'; use accuracy, latency or budget")
    need(0 <= d.threshold <= 100, f"distill.threshold {d.threshold} is outside 0-100")
    need(d.learning_rate > 0, "distill.learning_rate must be > 0")
    need(d.k >= 1 and d.calls_per_day >= 0, "distill.k must be at least 1 and calls_per_day not negative")
    need(d.cot_max_new_tokens >= 1, "distill.cot_max_new_tokens must be at least 1")
    need(d.topk >= 1 and d.chunk >= 1, "distill.topk and distill.chunk must be at least 1")
    need(cfg.select.max_per_prompt is None or cfg.select.max_per_prompt >= 1, "select.max_per_prompt must be at least 1")
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] = (), **flags: Any) -> RunConfig:
    """YAML file, then `--set` overrides, then explicit CLI flags (None = not given)."""
    data = {}
    if path:
        p = Path(path)
        if not p.exists():
            raise DepthtuneError(f"config file {p} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise DepthtuneError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    cfg = from_dict(RunConfig, data)
    for text in overrides:
        set_key(cfg, *parse_override(text))
    for dotted, value in flags.items():
        if value is not None:
            set_key(cfg, dotted, value)
    return validate(cfg)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
