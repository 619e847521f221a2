"""Typed run configuration: one dataclass per stage, YAML plus `--set stage.key=value`.

The resolved config is written to <run>/config.yaml and into every stage manifest,
so each artifact carries the settings it was made with.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
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
    quantize: str | None = None
    """None, 4bit (NF4, double quantisation) or 8bit, through bitsandbytes; training is then QLoRA."""
    device_map: str | None = None
    """None (the whole model on `device`) or auto: layers spread over the GPUs (and CPU) by accelerate,
    for the stages that only run the model forward."""
    max_memory: dict | None = None
    """With device_map=auto: the most each device may hold, e.g. {0: "20GiB", cpu: "60GiB"}."""


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
    template: str = "auto"
    """auto (the chat template where the model has one, else the raw text), chat or raw (the prompt text
    exactly as given: completion-style data such as 'Q: ... A:')."""
    suite_size: int = 0
    """Prompts per built-in suite (0 = the default size); the procedural suites have thousands."""


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
    batch_size: int = 16
    """Samples per scoring batch; a prompt's samples go together (they share its cache)."""
    seed: int = 0
    weights: dict[str, float] = field(default_factory=lambda: {
        "entropy_collapse": 0.4, "attention_sparsification": 0.2, "basin_resistance": 0.4})


@dataclass
class SelectConfig:
    threshold: float = 75.0
    """Keep samples with CDM >= threshold (0-100); used by the cdm selector. 75: about the deepest tenth of the
    embedded model's samples on the length-fair scale (the seeds' 80 was on the older, length-biased one)."""
    require_correct: bool = True
    """Where references exist, keep only correct samples."""
    selector: str = "cdm"
    """How samples are ranked and kept: cdm (CDM >= threshold), correct (correctness only: rejection
    sampling, as in STaR / RFT), random, logprob (mean token log-prob), or one CDM part alone
    (entropy_collapse, attention_sparsification, basin_resistance)."""
    keep: int | None = None
    """Keep exactly this many samples, the best by the selector's score (random: a seeded draw);
    None = everything that passes (cdm: the threshold)."""
    max_per_prompt: int | None = None
    dedup: bool = True
    """Drop samples whose completion text repeats another kept one for the same prompt."""
    exclude_degenerate: bool = True
    """Drop samples flagged degenerate by the score stage (repetition loop, unfinished, prompt echo)."""
    min_kept: int = 16
    """A selection smaller than this refuses to train (and names a setting that would keep enough);
    0 turns the check off."""
    seed: int = 0
    """Seed of the random selector."""


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
    """Seeds the adapter's initial weights, the data order and dropout: the same seed gives the same run."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass instead of keeping them: less memory, ~30% slower
    steps (the usual companion of --quantize on a large model)."""


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
    margin: float = 0.05
    """Non-inferiority margin of the decision: a model counts as 'as accurate' as another only when the
    95% interval of its accuracy difference lies above -margin (0.05 = 5 points)."""
    on_policy: float = 0.0
    """Share (lambda) of distillation batches on the student's own samples scored by the teacher
    (GKD, Agarwal et al.); 0 = only the teacher's samples (off-policy)."""


@dataclass
class EvaluateConfig:
    max_new_tokens: int = 48
    temperature: float = 0.0
    """0 = greedy decoding (the model's default behaviour)."""
    batch_size: int = 16
    deep_line: float = 75.0
    """A held-out sample with CDM >= deep_line counts as deep (deep_rate); the selection line by default."""
    seed: int = 0
    lm_eval: list[str] | None = None
    """lm-evaluation-harness tasks run on the base and the tuned model (e.g. [gsm8k, arc_easy], or a
    local task YAML); None = none."""
    lm_eval_limit: int | None = None
    """At most this many examples per lm-eval task (None = all)."""


@dataclass
class BackendConfig:
    kind: str = "auto"
    """auto, local (transformers in this process), openai (any OpenAI-compatible server: vLLM, SGLang,
    llama.cpp, TGI, hosted APIs) or llama-server (llama.cpp's server on the model's GGUF, started and
    stopped by depthtune). auto = llama-server for a GGUF model (the embedded one is) sampled on CPU
    when llama-server is installed (2-3x faster there), else local; the generate manifest records which
    ran. Evaluation stays in this process for the base and the tuned model alike unless `evaluate` is
    set, so before and after are measured the same way."""
    base_url: str | None = None
    """The server's address, e.g. http://127.0.0.1:8000/v1 (openai)."""
    model: str | None = None
    """The model's name on the server; None = the server's only model."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (the key itself is never written anywhere)."""
    endpoint: str = "completions"
    """completions (the prompt text built with the local chat template) or chat (messages; the server
    applies its own template: hosted chat APIs)."""
    concurrency: int = 8
    """Requests in flight at once."""
    timeout: float = 120.0
    """Seconds before a request is given up and retried."""
    retries: int = 4
    """Retries of a request that timed out or got 429 / 5xx, with exponential backoff."""
    evaluate: bool = False
    """Also answer the held-out prompts through the server: the base model in run, the teacher in
    compare and sweep (the tuned model and students are always evaluated in this process)."""


@dataclass
class AblateConfig:
    selectors: list[str] = field(default_factory=lambda: ["cdm", "correct", "random", "logprob", "entropy_collapse",
                                                          "attention_sparsification", "basin_resistance"])
    """The selectors compared; each trains adapters on the same number of kept samples."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Training seeds per selector (the random selector also draws its samples with it)."""
    keep: int | None = None
    """Samples each selector keeps; None = what the cdm selector keeps at select.threshold (the default run's selection)."""


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
    report_to: str | list[str] = "none"
    """Experiment trackers for training and each stage's summary metrics: none, tensorboard, mlflow,
    trackio or wandb (or a list); passed to the Trainer's report_to."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SELECTORS = ("cdm", "correct", "random", "logprob", "entropy_collapse", "attention_sparsification",
             "basin_resistance")
BACKENDS = ("auto", "local", "openai", "llama-server")
TRACKERS = ("none", "tensorboard", "mlflow", "trackio", "wandb")


def _suggest(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _describe(hint) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping",
             list: "a list", type(None): "null"}
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if typing.get_origin(hint) is list:
        return f"a list of {_describe(args[0])}s" if args else "a list"
    return names.get(typing.get_origin(hint) or hint, str(hint))


def coerce(key: str, value: Any, hint) -> Any:
    """`value` as the field's declared type, or a one-line error naming the key, the value and the type.

    YAML has already parsed the text (`--set train.rank=8` gives 8); an integer is taken where a number
    is wanted, and a single string where a list of strings is wanted.
    """
    if hint is Any:
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return coerce(key, value, option)
            except DepthtuneError:
                continue
    elif hint is type(None):
        if value is None:
            return None
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 5e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint in (bool, str) or (origin or hint) is dict:
        if isinstance(value, origin or hint):
            return value
    elif origin is list:
        items = [value] if isinstance(value, str) else value
        if isinstance(items, list):
            return [coerce(key, v, args[0]) for v in items] if args else items
    raise DepthtuneError(f"config key '{key}' wants {_describe(hint)}, got {value!r}")


def from_dict(cls, data: dict | None, where: str = ""):
    """Build dataclass `cls` from a dict, refusing unknown keys with a suggestion."""
    data = data or {}
    if not isinstance(data, dict):
        raise DepthtuneError(f"config section '{where or 'top level'}' must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise DepthtuneError(f"unknown config key '{where}{key}'{_suggest(key, fields)}")
        sub = fields[key].default_factory if fields[key].default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub):
            value = from_dict(sub, value, f"{where}{key}.")
        else:
            value = coerce(f"{where}{key}", value, hints[key])
        kwargs[key] = value
    return cls(**kwargs)


def locate(cfg: RunConfig, dotted: str) -> tuple[Any, str]:
    """-> (the dataclass holding `section.key`, key), refusing unknown names with a suggestion."""
    parts = dotted.split(".")
    obj = cfg
    for i, part in enumerate(parts):
        names = {f.name for f in dataclasses.fields(obj)}
        if part not in names:
            raise DepthtuneError(f"unknown config key '{'.'.join(parts[:i + 1])}'{_suggest(part, names)}")
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(obj, part)):
                raise DepthtuneError(f"'{dotted}' is a section; set one of its keys, e.g. {dotted}."
                                     f"{dataclasses.fields(getattr(obj, part))[0].name}=...")
            return obj, part
        obj = getattr(obj, part)
        if not dataclasses.is_dataclass(obj):
            raise DepthtuneError(f"'{'.'.join(parts[:i + 1])}' is a value, not a section")


def set_key(cfg: RunConfig, dotted: str, value: Any) -> None:
    """Set `section.key` on a RunConfig: unknown names and values of the wrong type get one line."""
    obj, key = locate(cfg, dotted)
    setattr(obj, key, coerce(dotted, value, typing.get_type_hints(type(obj))[key]))


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

    need(0 <= cfg.select.threshold <= 100, f"threshold {cfg.select.threshold} is outside 0-100; pick a CDM line such as 75")
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
    s = cfg.select
    need(s.selector in SELECTORS, f"unknown selector '{s.selector}'{_suggest(s.selector, SELECTORS)}; use one of "
         f"{', '.join(SELECTORS)}")
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
    need(b.kind in BACKENDS, f"unknown backend '{b.kind}'{_suggest(b.kind, BACKENDS)}; use {', '.join(BACKENDS)}")
    need(b.kind != "openai" or bool(b.base_url), "--backend openai needs the server's address: --base-url "
         "http://HOST:PORT/v1")
    need(b.endpoint in ("completions", "chat"), f"unknown backend.endpoint '{b.endpoint}'; use completions or chat")
    need(b.concurrency >= 1 and b.timeout > 0 and b.retries >= 0,
         "backend.concurrency must be >= 1, backend.timeout > 0 and backend.retries >= 0")
    need(0 < d.margin < 1, f"distill.margin must be between 0 and 1 (a share of accuracy), got {d.margin}")
    need(0 <= d.on_policy <= 1, f"distill.on_policy is a share in [0, 1], got {d.on_policy}")
    need(cfg.evaluate.lm_eval_limit is None or cfg.evaluate.lm_eval_limit >= 1, "evaluate.lm_eval_limit must be >= 1")
    a = cfg.ablate
    bad = [x for x in a.selectors if x not in SELECTORS]
    need(not bad, f"ablate.selectors: unknown selector(s) {bad}; use {', '.join(SELECTORS)}")
    need(bool(a.selectors) and bool(a.seeds), "ablate needs at least one selector and one seed")
    need(a.keep is None or a.keep >= 1, "ablate.keep must be at least 1 (or null: the smallest pool)")
    trackers = [cfg.report_to] if isinstance(cfg.report_to, str) else cfg.report_to
    unknown = [x for x in trackers if x not in TRACKERS]
    need(not unknown, f"unknown tracker {unknown}; --report-to takes {', '.join(TRACKERS)}")
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
