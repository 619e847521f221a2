"""Typed run configuration: one dataclass per stage, YAML plus `--set stage.key=value`.

The resolved config is written to <run>/config.yaml and into every stage manifest,
so each artifact carries the settings it was made with.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import DepthtuneError
from .sections import (  # noqa: F401
    AblateConfig,
    BackendConfig,
    DataConfig,
    DistillConfig,
    EvaluateConfig,
    GenerateConfig,
    ModelConfig,
    RoundsConfig,
    ScoreConfig,
    SelectConfig,
    TrainConfig,
)
from .selectors import AUTO, SELECTORS
from .typedconfig import from_dict, locate, parse_override, set_key, suggest  # noqa: F401 (the config's API)


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
    backend: BackendConfig = field(default_factory=BackendConfig)
    ablate: AblateConfig = field(default_factory=AblateConfig)
    rounds: RoundsConfig = field(default_factory=RoundsConfig)
    report_to: str | list[str] = "none"
    """Experiment trackers for training and each stage's summary metrics: none, tensorboard, mlflow,
    trackio or wandb (or a list); passed to the Trainer's report_to."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


BACKENDS = ("auto", "local", "openai", "llama-server")
TRACKERS = ("none", "tensorboard", "mlflow", "trackio", "wandb")


def validate(cfg: RunConfig) -> RunConfig:
    """Check ranges once, up front, with messages a user can act on."""
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise DepthtuneError(msg)

    s = cfg.select
    need(s.selector in SELECTORS or s.selector == AUTO, f"unknown selector '{s.selector}'"
         f"{suggest(s.selector, [*SELECTORS, AUTO])}; use auto or one of {', '.join(SELECTORS)}")
    on_cdm = s.selector == AUTO or SELECTORS[s.selector].field in ("cdm", *[p for p in ScoreConfig().weights])
    if s.threshold is not None and on_cdm:
        need(0 <= s.threshold <= 100, f"threshold {s.threshold} is outside 0-100; pick a CDM line such as 75, or "
             f"leave --threshold out for the relative line (the top select.top_share)")
    need(0 < s.top_share <= 1, f"select.top_share is a share in (0, 1], got {s.top_share}")
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
    need(cfg.data.checker in ("auto", "numeric", "exact", "contains") or ":" in cfg.data.checker,
         f"unknown checker '{cfg.data.checker}'; use auto, numeric, exact, contains, or your own as module:function")
    need(cfg.train.rank >= 1 and cfg.train.epochs > 0 and cfg.train.batch_size >= 1, "train.rank, epochs and batch_size must be positive")
    need(0 <= cfg.train.dropout < 1, "train.dropout must be in [0, 1)")
    need(cfg.model.dtype in ("auto", "float32", "bfloat16", "float16"), f"unknown dtype '{cfg.model.dtype}'")
    d = cfg.distill
    need(d.temperature > 0, f"distill.temperature must be > 0, got {d.temperature}")
    need(0 <= d.alpha <= 1 and 0 <= d.beta <= 1, "distill.alpha and distill.beta must be in [0, 1]")
    need(d.kind in ("forward_kl", "reverse_kl", "jsd"), f"unknown distill.kind '{d.kind}'; use forward_kl, reverse_kl or jsd")
    need(d.prune in ("block", "even"), f"unknown distill.prune '{d.prune}'; use block or even")
    need(d.method in ("full", "lora"), f"unknown distill.method '{d.method}'; use full or lora")
    need(d.student_layers is None or d.student_layers >= 1,
         f"pruning to {d.student_layers} layers leaves no layer; keep at least 1 (--student-layers)")
    need(d.targets in ("answers", "cot", "answer_only", "step_by_step"),
         f"unknown distill.targets '{d.targets}'; use answers, cot, answer_only or step_by_step")
    need(d.curriculum in ("none", "cdm", "level"), f"unknown curriculum '{d.curriculum}'; use none, cdm or level")
    need(d.priority in ("accuracy", "latency", "budget"), f"unknown priority '{d.priority}'; use accuracy, latency or budget")
    need(d.calls_per_day >= 0, "distill.calls_per_day must not be negative")
    for section in ("generate", "select", "train"):  # the overrides are keys of those sections, checked as they are
        validate_overrides(cfg, section)
    need(d.cot_max_new_tokens >= 1, "distill.cot_max_new_tokens must be at least 1")
    need(d.topk >= 1 and d.chunk >= 1, "distill.topk and distill.chunk must be at least 1")
    need(cfg.select.max_per_prompt is None or cfg.select.max_per_prompt >= 1, "select.max_per_prompt must be at least 1")
    need(s.keep is None or s.keep >= 1, "select.keep must be at least 1 (or null: keep all that pass)")
    need(s.min_kept >= 0, "select.min_kept must be >= 0 (0 = no minimum)")
    m = cfg.model
    need(m.quantize in (None, "4bit", "8bit"), f"unknown quantize '{m.quantize}'; use 4bit or 8bit")
    need(not (m.quantize and cfg.train.full), "--quantize with --full is not supported: full fine-tuning of "
         "4-bit or 8-bit weights would lose them; drop --full (QLoRA trains an adapter) or drop --quantize")
    need(m.device_map in (None, "auto"), f"unknown device_map '{m.device_map}'; use auto (or leave it unset)")
    need(m.max_memory is None or m.device_map == "auto", "model.max_memory needs model.device_map=auto")
    need(cfg.data.template in ("auto", "chat", "raw"), f"unknown template '{cfg.data.template}'; use auto, chat or raw")
    need(cfg.data.suite_size >= 0, "data.suite_size must be >= 0 (0 = the default size)")
    b = cfg.backend
    need(b.kind in BACKENDS, f"unknown backend '{b.kind}'{suggest(b.kind, BACKENDS)}; use {', '.join(BACKENDS)}")
    need(b.kind != "openai" or bool(b.base_url), "--backend openai needs the server's address: --base-url "
         "http://HOST:PORT/v1")
    urls = [b.base_url] if isinstance(b.base_url, str) else b.base_url or []
    need(all(u.startswith(("http://", "https://")) for u in urls), f"--base-url wants http(s)://HOST:PORT/v1, got "
         f"{next((u for u in urls if not u.startswith(('http://', 'https://'))), '')}")
    need(b.endpoint in ("completions", "chat"), f"unknown backend.endpoint '{b.endpoint}'; use completions or chat")
    need(b.concurrency >= 1 and b.timeout > 0 and b.retries >= 0,
         "backend.concurrency must be >= 1, backend.timeout > 0 and backend.retries >= 0")
    need(0 < d.margin < 1, f"distill.margin must be between 0 and 1 (a share of accuracy), got {d.margin}")
    need(0 <= d.on_policy <= 1, f"distill.on_policy is a share in [0, 1], got {d.on_policy}")
    need(cfg.evaluate.lm_eval_limit is None or cfg.evaluate.lm_eval_limit >= 1, "evaluate.lm_eval_limit must be >= 1")
    a = cfg.ablate
    bad = [x for x in a.selectors or [] if x not in SELECTORS]
    need(not bad, f"ablate.selectors: unknown selector(s) {bad}; use {', '.join(SELECTORS)}")
    need(a.selectors is None or bool(a.selectors), "ablate.selectors needs at least one selector (or null)")
    need(bool(a.seeds), "ablate needs at least one seed")
    r = cfg.rounds
    need(r.n >= 1, f"--rounds must be at least 1, got {r.n}")
    need(r.mode in ("restart", "continue"), f"unknown rounds.mode '{r.mode}'; use restart or continue")
    need(cfg.generate.topk_taus and all(t > 0 for t in cfg.generate.topk_taus), "generate.topk_taus are temperatures > 0")
    need(a.keep is None or a.keep >= 1, "ablate.keep must be at least 1 (or null: the smallest pool)")
    trackers = [cfg.report_to] if isinstance(cfg.report_to, str) else cfg.report_to
    unknown = [x for x in trackers if x not in TRACKERS]
    need(not unknown, f"unknown tracker {unknown}; --report-to takes {', '.join(TRACKERS)}")
    return cfg


def validate_overrides(cfg: RunConfig, section: str) -> None:
    """distill.<section> overrides: every key must be one of the section's, with a value of its type."""
    import copy

    trial = copy.deepcopy(cfg)
    for key, value in getattr(cfg.distill, section).items():
        try:
            set_key(trial, f"{section}.{key}", value)
        except DepthtuneError as e:  # named as the user wrote it
            raise DepthtuneError(str(e).replace(f"'{section}.", f"'distill.{section}.")) from None


def side(cfg: RunConfig, sections=("generate", "select", "train")) -> RunConfig:
    """A copy of cfg with the distill section's overrides of generate, select and train applied: the
    settings of the teacher's samples and of the trained students."""
    import copy

    out = copy.deepcopy(cfg)
    for section in sections:
        for key, value in getattr(cfg.distill, section).items():
            set_key(out, f"{section}.{key}", value)
    return out


RENAMED = {"distill.k": "distill.generate.k", "distill.threshold": "distill.select.threshold",
           "distill.learning_rate": "distill.train.learning_rate"}


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
    cfg = from_dict(RunConfig, data, renamed=RENAMED)
    for text in overrides:
        set_key(cfg, *parse_override(text), renamed=RENAMED)
    for dotted, value in flags.items():
        if value is not None:
            set_key(cfg, dotted, value)
    return validate(cfg)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
