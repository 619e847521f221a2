"""Stage 4, train: a LoRA adapter (or, with --full, all weights) on the selected samples.

Reads  <run>/select/selected.jsonl
Writes <run>/train/adapter/ (PEFT format) or <run>/train/model/ (--full), + manifest.json
       <run>/train/checkpoints/ while running: a rerun resumes from the last one.

The loss is plain next-token cross-entropy on completion tokens only: prompt and
padding labels are -100. HF Trainer gives the loop, checkpoints and resume.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from .. import artifacts, distributed, tracking
from ..config import RunConfig, TrainConfig
from ..models import count_params, is_quantized
from ..progress import Progress

IGNORE = -100


def build_example(row: dict, eos_id: int) -> dict:
    """Prompt ids + completion ids (+ eos when the sample stopped by itself); prompt masked."""
    completion = row["completion_ids"] + ([eos_id] if row.get("finished") else [])
    return {"input_ids": row["prompt_ids"] + completion,
            "labels": [IGNORE] * len(row["prompt_ids"]) + completion}


def packed(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Padding-free: the batch as one row, [1, total tokens], position ids restarting at every example, so
    attention stays within each example (transformers' DataCollatorWithFlattening; its models build the
    block-diagonal mask from the position ids, when the forward pass keeps no KV cache: fit turns it off).
    No padding is computed."""
    from transformers import DataCollatorWithFlattening

    return DataCollatorWithFlattening(return_position_ids=True)(
        [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples])


def batcher(pad_id: int, padding_free: bool):
    """The collate function of a training run: padded batches, or one packed row per batch."""
    return packed if padding_free else (lambda b: collate(b, pad_id))


def packing_works(model, examples: list[dict], n: int = 12) -> bool:
    """Whether this model keeps packed examples apart: the first two examples' first n tokens, packed into
    one row with restarting position ids, give the logits each gives alone. Attention that builds its mask
    from position ids (flash attention, transformers' sdpa and eager masks for most models) passes; one that
    would let an example see the one before it fails, and training then pads instead of training wrong."""
    if len(examples) < 2 or "input_ids" not in examples[0]:
        return True
    a, b = (torch.tensor(e["input_ids"][:n]) for e in examples[:2])
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            dev = next(model.parameters()).device
            alone = model(b[None].to(dev), use_cache=False).logits[0].float()
            packed = model(torch.cat([a, b])[None].to(dev), use_cache=False, position_ids=torch.cat(  # as fit runs it
                [torch.arange(len(a)), torch.arange(len(b))])[None].to(dev)).logits[0, len(a):].float()
    finally:
        model.train(was)
    return bool(torch.allclose(packed, alone, atol=1e-3 * max(1.0, alone.abs().max().item()), rtol=1e-3))


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: input_ids/attention_mask/labels [B, T]; padding is masked in labels."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def wrap_lora(model, cfg: TrainConfig):
    """The model with a fresh LoRA adapter, its initial weights drawn from cfg.seed: whatever the process
    sampled before (generation, scoring), the same seed gives the same adapter, so a run killed before its
    first checkpoint and started again trains exactly as the uninterrupted one.

    A 4-bit or 8-bit base is QLoRA: PEFT's k-bit preparation freezes it and keeps its norms and
    embeddings in fp32 (the adapter learns in full precision over the quantised weights)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import set_seed

    if is_quantized(model):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    set_seed(cfg.seed)
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=cfg.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def _checkpointing(args_cls, on: bool) -> dict:
    """Activation checkpointing under its name in this transformers (renamed from gradient_checkpointing)."""
    if not on:
        return {}
    return {"activation_checkpointing" if "activation_checkpointing" in args_cls.__dataclass_fields__
            else "gradient_checkpointing": True}


def drop_incomplete(ckpt_dir: Path, log=print) -> None:
    """Remove checkpoints the Trainer did not finish writing (a full disk, a kill mid-save): it writes
    trainer_state.json last, so a checkpoint without a readable one is never resumed from."""
    for folder in sorted(Path(ckpt_dir).glob("checkpoint-*")):
        try:
            json.loads((folder / "trainer_state.json").read_text())
        except (OSError, ValueError):
            shutil.rmtree(folder, ignore_errors=True)
            log(f"  dropped {folder.name}: incomplete (the process stopped while writing it)")


class _Elapsed:
    """Keeps training seconds across interruptions: saved beside every checkpoint."""

    def __init__(self, path: Path):
        self.path = path
        self.before = json.loads(path.read_text())["seconds"] if path.exists() else 0.0
        self.start = time.perf_counter()

    def total(self) -> float:
        return self.before + time.perf_counter() - self.start

    def save(self) -> None:
        artifacts.write_json(self.path, {"seconds": self.total()})


def fit(model, tok, rows: list[dict], cfg: TrainConfig, out_dir: Path, log=print, trainer_cls=None,
        examples: list | None = None, collate_fn=None, sequential: bool = False, report_to="none",
        run_name: str | None = None, log_dir: Path | None = None, save_dir: Path | None = None,
        checkpoint_last: bool = True, **trainer_kwargs):
    """Train `model` (already LoRA-wrapped or not) on rows; checkpoints in out_dir/checkpoints.

    trainer_cls / examples / collate_fn / trainer_kwargs let distillation swap the loss
    (depthtune.distill) while keeping this loop, its checkpoints and resume; collate_fn(batch, packed) is told
    whether to pack (cfg.padding_free, unless packing_works says this model cannot). sequential keeps
    the rows' order in every epoch (a curriculum) instead of shuffling. report_to goes to the
    Trainer as is (none, tensorboard, mlflow, trackio, wandb or a list), with run_name; TensorBoard
    event files go to log_dir (default out_dir/logs), which outlives the checkpoints. checkpoint_last=False
    skips the checkpoint the Trainer writes of the last step whatever save_steps says, for a caller that
    writes the finished model at once and deletes the checkpoints (a sweep cell keeps it: it evaluates
    before writing, and a retried cell resumes from it).
    -> (model, seconds, final loss).
    """
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_utils import get_last_checkpoint

    ckpt_dir = out_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    # no KV cache while training: nothing reuses it, and with a cache transformers ignores the position ids
    # that keep packed (padding-free) examples apart
    (model.get_base_model() if hasattr(model, "get_base_model") else model).config.use_cache = False
    elapsed = _Elapsed(out_dir / "elapsed.json")
    device = next(model.parameters()).device
    # the dtype the model was loaded in: a QLoRA model keeps fp32 norms but computes in it (bf16 on a GPU)
    bf16 = getattr(model.config, "dtype", None) == torch.bfloat16 or next(model.parameters()).dtype == torch.bfloat16
    lr = cfg.learning_rate or (2e-5 if cfg.full else 2e-4)
    args = TrainingArguments(
        output_dir=str(ckpt_dir), per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, num_train_epochs=cfg.epochs, learning_rate=lr,
        lr_scheduler_type="linear", warmup_steps=0, logging_steps=1, save_strategy="steps",
        save_steps=cfg.save_steps, save_total_limit=2, disable_tqdm=True,  # Steps shows progress
        seed=cfg.seed, **tracking.trainer_args(report_to, run_name),
        use_cpu=device.type == "cpu", bf16=bf16, **_checkpointing(TrainingArguments, cfg.gradient_checkpointing),
        remove_unused_columns=False, dataloader_num_workers=0, ddp_find_unused_parameters=False,
        train_sampling_strategy="sequential" if sequential else "random")

    class Steps(TrainerCallback):
        """Optimiser steps as a Progress (a bar on a terminal, lines elsewhere), loss beside them."""
        bar = None

        def on_train_begin(self, args, state, control, **kw):
            if state.is_world_process_zero:
                self.bar = Progress(state.max_steps, "train", unit="step", log=log, initial=state.global_step,
                                    hint="--max-train-prompts N or --epochs N")

        def on_log(self, args, state, control, logs=None, **kw):
            if self.bar is not None and logs and "loss" in logs:
                self.bar.update(state.global_step - self.bar.n, loss=f"{logs['loss']:.4f}")

        def on_train_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.close()

        def on_step_end(self, args, state, control, **kw):
            # that last checkpoint (model and optimiser: over a GB for a fully trained student) would be
            # written only to be deleted
            if not checkpoint_last and state.global_step >= state.max_steps:
                control.should_save = False

        def on_save(self, args, state, control, **kw):
            if state.is_world_process_zero:
                elapsed.save()

    if examples is None:
        examples = [build_example(r, tok.eos_token_id) for r in rows]  # a list is a map-style dataset
    padding_free = cfg.padding_free
    if padding_free and not packing_works(model, examples):
        log("  train.padding_free: this model's attention lets packed examples see each other; padding instead")
        padding_free = False
    trainer = (trainer_cls or Trainer)(model=model, args=args, train_dataset=examples,
                                       data_collator=(lambda b: collate_fn(b, padding_free)) if collate_fn else batcher(tok.pad_token_id, padding_free),
                                       callbacks=[Steps()], **trainer_kwargs)
    trainer.remove_callback(PrinterCallback)  # Steps shows the progress we want
    tracking.redirect_tensorboard(trainer, report_to, log_dir or out_dir / "logs")
    distributed.check_resume(ckpt_dir)
    drop_incomplete(ckpt_dir, log)
    last = get_last_checkpoint(str(ckpt_dir))
    if last:
        log(f"  resuming from {Path(last).name}")
    result = trainer.train(resume_from_checkpoint=last)
    if save_dir is not None:  # every process takes part: FSDP / ZeRO-3 gather the shards, the main one writes
        trainer.save_model(str(save_dir))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return model.eval(), elapsed.total(), (losses[-1] if losses else result.training_loss)


def run(run_dir: Path, cfg: RunConfig, model, tok) -> tuple[dict, object]:
    """`model` is the base as loaded; it is wrapped (LoRA) or trained in place (--full).

    -> (manifest, trained model).
    """
    stage_dir = Path(run_dir) / "train"
    rows = artifacts.read_jsonl(Path(run_dir) / "select" / "selected.jsonl")
    base_params = count_params(model)
    model = model if cfg.train.full else wrap_lora(model, cfg.train)
    model.train()
    trainable = count_params(model, trainable_only=True)
    gathered = stage_dir / "gathered" if distributed.sharded() else None  # FSDP / ZeRO-3: the Trainer saves
    model, seconds, loss = fit(model, tok, rows, cfg.train, stage_dir, report_to=cfg.report_to,
                               run_name=Path(run_dir).resolve().name, log_dir=Path(run_dir) / "logs" / "train",
                               save_dir=gathered, checkpoint_last=False)
    if not distributed.is_main():  # every process trained (DDP); the main process saves
        return distributed.others_read(stage_dir, "train"), model
    target = stage_dir / ("model" if cfg.train.full else "adapter")
    with artifacts.atomic_path(target) as tmp:
        if gathered:
            shutil.move(gathered, tmp)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    manifest = artifacts.write_manifest(
        stage_dir, "train", cfg.to_dict(), base_model=cfg.train.base or cfg.model.name, method="full" if cfg.train.full else "lora",
        output=target.name, examples=len(rows), trainable_params=trainable, base_params=base_params,
        train_seconds=round(seconds, 2), final_loss=round(float(loss), 5), quantize=cfg.model.quantize,
        processes=distributed.world()[1])
    shutil.rmtree(stage_dir / "checkpoints", ignore_errors=True)
    return distributed.main_wrote(manifest), model
