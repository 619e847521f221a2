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
from .selectors import AUTO, SELECTORS
from .typedconfig import from_dict, locate, parse_override, set_key, suggest  # noqa: F401 (the config's API)


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
    """auto (numeric when the reference is a number, else exact), numeric, exact, contains, or your own
    verifier as module:function (see depthtune.verifiers)."""
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
    max_new_tokens: int = 128
    """Token limit of an answer. 128: the embedded model's sampled answers to the built-in suites end by
    themselves at a median of 24 tokens and 94% of them within 128 (docs/results.md)."""
    batch_size: int = 64
    """Sequences decoding together in this process (continuous batching: a finished answer's place goes to
    the next); a chunk of 4 x batch_size sequences is the unit a resumed run starts again from."""
    seed: int = 0
    """Every sample's seed derives from (seed, prompt id, sample index): the same samples however they are batched
    (up to the float rounding of batched matmuls)."""
    topk: int = 0
    """Store the model's top-k next-token log-probs per generated token (cached teacher); 0 = off."""
    topk_taus: list[float] = field(default_factory=lambda: [1.0])
    """Temperatures at which a cached teacher is exact: per token and temperature the tail's tempered
    log-mass is kept beside the top-k (compare and sweep set the distillation temperature here)."""


@dataclass
class ScoreConfig:
    noise: float = 0.3
    """Std of the Gaussian noise on input embeddings, relative to their RMS (basin-escape test)."""
    batch_size: int = 16
    """Samples per scoring batch; a prompt's samples go together (they share its cache)."""
    seed: int = 0
    cdm: bool | None = None
    """Compute CDM and its parts (two forward passes per sample); None = when the selector ranks by CDM.
    Off, the stage judges answers, counts majority votes and flags degenerate samples, and the mean
    log-prob comes from the sampler."""
    weights: dict[str, float] = field(default_factory=lambda: {
        "entropy_collapse": 0.4, "attention_sparsification": 0.2, "basin_resistance": 0.4})


@dataclass
class SelectConfig:
    threshold: float | None = None
    """An absolute line on the selector's score (CDM 0-100; a mean log-prob): keep the eligible samples at or
    above it. None = the relative line, top_share."""
    top_share: float = 0.5
    """The relative line: keep the best share of the eligible samples by the selector's score (at least
    min_kept of them). The filters (correct, majority, random) keep every eligible sample."""
    require_correct: bool = True
    """Where references exist, keep only correct samples; false selects without labels (they are then used
    for evaluation only)."""
    selector: str = "auto"
    """How samples are ranked and kept: auto, correct, majority, majority_cdm, cdm, logprob, random, or one
    CDM part alone (depthtune.stages.select lists what each does). auto = correct where references or a
    verifier judge the samples, majority where nothing does (depthtune.selectors.resolve)."""
    keep: int | None = None
    """Keep exactly this many samples, the best by the selector's score (correct, random: a seeded draw);
    None = the line (threshold or top_share)."""
    max_per_prompt: int | None = None
    dedup: bool = True
    """Drop samples whose completion text repeats another kept one for the same prompt."""
    exclude_degenerate: bool = True
    """Drop samples flagged degenerate by the score stage (repetition loop, unfinished, prompt echo)."""
    min_kept: int = 16
    """The least a selection trains on: the relative line keeps at least this many, and a pool of eligible
    samples smaller than this refuses to train (naming a setting that would keep enough); 0 turns it off."""
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
    base: str | None = None
    """The model the adapter is trained on; None = model.name (the model that sampled). Rounds in restart
    mode train every round's adapter on the first round's base while the round before's tuned model samples."""
    padding_free: bool = False
    """Pack each batch into one row with position ids restarting per example (no padding computed); the
    same loss as padded batches (tests/stages/test_train.py)."""
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
    generate: dict = field(default_factory=lambda: {"k": 4})
    """Overrides of the generate section for the teacher's samples, e.g. {k: 4, max_new_tokens: 128}."""
    select: dict = field(default_factory=lambda: {"selector": "correct"})
    """Overrides of the select section for the teacher's samples used as targets (default: every correct,
    non-degenerate one)."""
    train: dict = field(default_factory=lambda: {"learning_rate": 1e-4})
    """Overrides of the train section for both trained students (alone and distilled, so they stay
    comparable); a pruned student needs more than the 2e-5 usual for full fine-tuning to heal."""
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
    max_new_tokens: int = 128
    temperature: float = 0.0
    """0 = greedy decoding (the model's default behaviour)."""
    batch_size: int = 64
    deep_line: float = 75.0
    """A held-out answer with CDM >= deep_line counts as deep (deep_rate)."""
    cdm: bool = True
    """Score the held-out answers with CDM (two forward passes each): the report's depth rows."""
    seed: int = 0
    lm_eval: list[str] | None = None
    """lm-evaluation-harness tasks run on the base and the tuned model (e.g. [gsm8k, arc_easy], or a
    local task YAML); None = none."""
    lm_eval_limit: int | None = None
    """At most this many examples per lm-eval task (None = all)."""


@dataclass
class BackendConfig:
    kind: str = "auto"
    """auto (= local), local (this process: continuous batching over the model in the precision it is
    scored and trained in), openai (any OpenAI-compatible server: vLLM, SGLang, llama.cpp, TGI, hosted
    APIs) or llama-server (llama.cpp's server on the model's GGUF, started and stopped by depthtune). On
    2 CPU cores the in-process batcher samples the embedded model about as fast as llama-server (127 vs
    135 tok/s; 1.3x with top-20 log-probs, docs/results.md), from the fp32 weights the run scores and
    trains rather than Q4_1 ones, and on every machine alike; the generate manifest records which ran.
    Evaluation stays in this process for the base and the tuned model alike unless `evaluate` is set, so
    before and after are measured the same way."""
    base_url: str | list[str] | None = None
    """The server's address, e.g. http://127.0.0.1:8000/v1 (openai), or a list of replicas' addresses:
    requests are spread over the healthy ones."""
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
class RoundsConfig:
    n: int = 1
    """Rounds of sample -> select -> train (--rounds N); round r samples from round r - 1's tuned model."""
    mode: str = "restart"
    """restart: every round trains a fresh adapter on the base, on that round's samples (ReST-EM);
    continue: every round trains on the model the round before tuned (iterated fine-tuning)."""
    margin: float = 0.0
    """Stop early when a round's gain over the round before has a 95% interval entirely below this many
    points of held-out accuracy (0: stop when it is shown to make the model worse)."""


@dataclass
class AblateConfig:
    selectors: list[str] | None = None
    """The selectors compared; each trains adapters on the same number of kept samples. None = correct, cdm,
    logprob, majority, majority_cdm and random (label_free: the same, correct as the labelled upper bound)."""
    label_free: bool = False
    """Select without reference answers (require_correct off for every selector but correct, which stays as
    the labelled upper bound); references are used for evaluation only."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Training seeds per selector (the random selector also draws its samples with it)."""
    keep: int | None = None
    """Samples each selector keeps; None = what the smallest selector's eligible pool holds."""
    resources: dict = field(default_factory=lambda: {"cpus_per_cell": 1, "gpus_per_cell": 0})
    """What each cell asks of a Ray cluster (--executor ray): cpus_per_cell, gpus_per_cell."""


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
