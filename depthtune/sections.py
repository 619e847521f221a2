"""The settings of each stage: one dataclass per section of config.yaml, a docstring per field.

depthtune.config assembles them into RunConfig, checks them (validate) and reads and writes them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    """Token limit of an answer. 128: in the default run 36 of the embedded model's 384 samples (9%) reached
    it (docs/results.md#the-default-run); cut-off samples are left out of selection."""
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
    verifier judge the samples, majority (self-consistency) where nothing does or require_correct is off, and
    logprob when too few answers agree to vote; the label-free ablations in docs/results.md picked them
    (depthtune.selectors.resolve)."""
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
    padding_free: bool = True
    """Pack each batch into one row with position ids restarting per example (no padding computed); the
    same loss as padded batches (tests/stages/test_train.py), 1.7x the tokens/s and 0.68x the memory of
    padded batches on the embedded model (bench/bench_packing.py). A model whose attention would let packed
    examples see each other is checked for at the start and trained padded."""
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
    """Decoder layers a pruned student keeps; None = 7 in 8 of the teacher's (26 of 30)."""
    prune: str = "block"
    """How a pruned student's layers are chosen: block (drop the contiguous layers that change the hidden
    state least, measured on the run's prompts; Gromov et al. 2024) or even (first, last, evenly between)."""
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
    cdm: bool = False
    """Score the held-out answers with CDM (two forward passes each): the report's depth rows (mean CDM,
    deep rate). Off by default: the ablation found CDM no better a guide than correctness or the log-prob
    (docs/results.md#label-free), and on the default run these passes cost about a minute of the five."""
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
    135 tok/s, docs/results.md#samplers), from the fp32 weights the run scores and
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
    continue: every round trains on the model the round before tuned (iterated fine-tuning). Measured
    alike over 3 labelled rounds (docs/results.md#rounds); restart cannot compound a round's overfitting."""
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
