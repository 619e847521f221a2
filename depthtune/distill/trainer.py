"""Teacher -> student training with soft targets: online teacher or cached top-k logits.

The same loop as depthtune.stages.train (HF Trainer: checkpoints, resume), with compute_loss
swapped for depthtune.distill.losses.chunked_kd_loss over the completion tokens: the student's
final hidden states and LM head, and the teacher's (online) or its cached top-k rows.
"""
from __future__ import annotations

import torch
from transformers import Trainer

from .. import models
from ..config import DistillConfig
from ..errors import DepthtuneError
from ..stages.train import batcher, build_example
from .losses import IGNORE, chunked_kd_loss
from .onpolicy import goes_on_policy, student_batch


def split_head(model):
    """-> (backbone, LM-head linear) of a causal LM whose logits the chunked loss can rebuild: no bias."""
    backbone, head = models.split_head(model)
    if getattr(head, "bias", None) is not None:
        raise DepthtuneError(f"{type(model).__name__} has a biased LM head, which logit distillation "
                             f"does not support yet; use sequence-level distillation (--set distill.alpha=0)")
    return backbone, head


def kd_examples(rows: list[dict], eos_id: int, cache: dict | None, tau: float = 1.0) -> list[dict]:
    """Training examples; with a cache, each carries its [n_targets, k] teacher rows and, where the cache
    holds it, the [n_targets] tempered tail log-mass at tau (then the cached target is exact)."""
    out = []
    for r in rows:
        ex = build_example(r, eos_id)
        if cache is not None:
            rows_ = cache[r["sample_id"]]
            ex["top_ids"], ex["top_logp"] = rows_.ids, rows_.logp
            tail = rows_.tail_at(tau)
            if tail is not None:
                ex["tail"] = tail
        out.append(ex)
    return out


def kd_collate(examples: list[dict], pad_id: int, padding_free: bool = False) -> dict:
    batch = batcher(pad_id, padding_free)(examples)
    if "top_ids" in examples[0]:  # rows in the order of the batch's valid target positions
        batch["top_ids"] = torch.cat([e["top_ids"] for e in examples])
        batch["top_logp"] = torch.cat([e["top_logp"] for e in examples])
        if all("tail" in e for e in examples):
            batch["tail"] = torch.cat([e["tail"] for e in examples])
    return batch


def layout(inputs: dict, device=None) -> dict:
    """The model inputs of a batch, padded (attention mask) or packed (position ids), on `device`."""
    keys = [k for k in ("input_ids", "attention_mask", "position_ids") if k in inputs]
    return {k: inputs[k] if device is None else inputs[k].to(device) for k in keys}


class DistillTrainer(Trainer):
    """Trainer whose loss is the chunked distillation loss (see depthtune.distill.losses)."""

    def __init__(self, *args, kd: DistillConfig, teacher=None, vocab: int, sampling: dict | None = None,
                 counts: dict | None = None, remote=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.kd, self.teacher, self.vocab, self.remote = kd, teacher, vocab, remote
        self.sampling = sampling or {}  # on-policy batches: temperature, top_p, max_new_tokens, pad_id
        self.counts = counts if counts is not None else {}  # batches and on_policy_batches, for the manifest
        self.counts.update(batches=0, on_policy_batches=0, teacher_positions=0, teacher_misses=0)
        if kd.on_policy > 0 and teacher is None and remote is None:
            raise DepthtuneError("on-policy distillation scores the student's own tokens with the teacher: it needs "
                                 "the teacher in memory (compare --online) or behind a server (--backend openai)")

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The Trainer's micro-batches of one optimiser step, a share distill.on_policy of them replaced by
        the student's own samples (depthtune.distill.onpolicy) before the target tokens are counted."""
        batches, n_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.kd.on_policy <= 0:
            return batches, n_items
        for i, batch in enumerate(batches):
            self.counts["batches"] += 1
            if goes_on_policy(self.kd.on_policy, self.args.seed, self.state.global_step, i):
                s = self.sampling
                batches[i] = student_batch(self.model, batch, pad_id=s["pad_id"],
                                           temperature=s["temperature"], top_p=s["top_p"],
                                           max_new_tokens=s["max_new_tokens"],
                                           seed=self.args.seed * 1_000_003 + self.state.global_step * 97 + i)
                self.counts["on_policy_batches"] += 1
        return batches, self._get_num_items_in_batch(batches, device)

    def remote_loss(self, model, inputs, num_items_in_batch):
        """An on-policy batch scored by a teacher behind a server: its log-probs of the student's tokens are
        the advantage of a policy-gradient loss (losses.onpolicy_pg_loss)."""
        from ..backends.served_teacher import score_tokens
        from .losses import onpolicy_pg_loss
        from .onpolicy import examples_of

        logits = model(**layout(inputs), use_cache=False).logits[:, :-1]
        labels = inputs["labels"][:, 1:]
        valid = labels != IGNORE
        student_lp = torch.log_softmax(logits[valid].float(), -1).gather(-1, labels[valid].unsqueeze(-1)).squeeze(-1)
        teacher_lp = []
        for ids, row_labels in examples_of(inputs):
            target = (row_labels != IGNORE).nonzero().flatten()
            if not len(target):
                continue
            start = int(target[0])
            got = score_tokens(self.remote, ids[:start].tolist(), row_labels[target].tolist(), topk=self.kd.topk)
            teacher_lp.append(got["logprobs"])
            self.counts["teacher_positions"] += got["requests"]
            self.counts["teacher_misses"] += got["misses"]
        loss = onpolicy_pg_loss(student_lp, torch.cat(teacher_lp), normalizer=num_items_in_batch)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices \
                and self.accelerator.num_processes > 1:
            loss = loss * self.accelerator.num_processes
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if inputs.get("on_policy") and self.remote is not None:
            self.loss_is_scaled_for_ga = num_items_in_batch is not None
            loss = self.remote_loss(model, inputs, num_items_in_batch)
            return (loss, None) if return_outputs else loss
        labels = inputs["labels"][:, 1:]  # hidden state t predicts token t + 1
        inner = self.accelerator.unwrap_model(model)
        _, head = split_head(inner)
        cap = getattr(inner.config, "final_logit_softcapping", None)
        # through `model` itself, not its backbone: under DDP the wrapper's forward is what makes the
        # backward pass average gradients over processes. One position's logits; the last hidden state
        # (after the final norm) goes to the chunked loss.
        hidden = model(**layout(inputs), output_hidden_states=True, logits_to_keep=1,
                       use_cache=False).hidden_states[-1]  # no cache: packed rows are kept apart
        valid = labels != IGNORE
        h, y = hidden[:, :-1][valid], labels[valid]  # [N, D], [N]
        # num_items_in_batch counts the target tokens of every micro-batch of this optimiser step (and of
        # every process): dividing the summed loss by it makes grad_accum = 2 at batch b the update of one
        # batch of 2b, as the Trainer's own causal-LM loss does for the student trained alone.
        on_policy = bool(inputs.get("on_policy"))  # the student's own tokens are no cross-entropy target
        opts = dict(kind=self.kd.kind, tau=self.kd.temperature, alpha=1.0 if on_policy else self.kd.alpha,
                    beta=self.kd.beta, chunk=self.kd.chunk, normalizer=num_items_in_batch, cap=cap)
        self.loss_is_scaled_for_ga = num_items_in_batch is not None
        if self.teacher is not None and (on_policy or "top_ids" not in inputs):
            t_backbone, t_head = split_head(self.teacher)
            with torch.no_grad():
                t_hidden = t_backbone(**layout(inputs, self.teacher.device), use_cache=False).last_hidden_state
            t_h = t_hidden[:, :-1][valid.to(t_hidden.device)].to(h.device)
            if on_policy:  # teacher work on the student's own tokens, counted as a served teacher's is
                self.counts["teacher_positions"] += int(valid.sum())
            loss = chunked_kd_loss(h, head.weight[:self.vocab], y, teacher_hidden=t_h,
                                   teacher_weight=t_head.weight[:self.vocab].to(h.device),
                                   teacher_cap=getattr(self.teacher.config, "final_logit_softcapping", None), **opts)
        else:
            if inputs["top_ids"].shape[0] != y.shape[0]:
                raise DepthtuneError("cached teacher rows do not line up with the batch's target tokens")
            loss = chunked_kd_loss(h, head.weight[:self.vocab], y, top_ids=inputs["top_ids"],
                                   top_logp=inputs["top_logp"], tail=inputs.get("tail"), **opts)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices \
                and self.accelerator.num_processes > 1:  # DDP averages gradients over processes; undo that
            loss = loss * self.accelerator.num_processes
        return (loss, None) if return_outputs else loss


def cross_examples(rows: list[dict], student_tok, teacher_tok, teacher_prompts: dict[str, list[int]],
                   student_prompts: dict[str, list[int]]) -> list[dict]:
    """Examples for a student whose tokenizer is not the teacher's: the teacher's completion text tokenised
    by each, the student's labels on its own tokens (+ eos), and the aligned target positions (targets.
    aligned_positions) at which the two next-token distributions are compared."""
    from .targets import aligned_positions

    out = []
    for r in rows:
        s_ids, t_ids, pairs = aligned_positions(r["completion"], student_tok, teacher_tok)
        sp, tp = student_prompts[r["sample_id"]], teacher_prompts[r["sample_id"]]
        eos = [student_tok.eos_token_id] if r.get("finished") else []
        out.append({"input_ids": sp + s_ids + eos, "labels": [IGNORE] * len(sp) + s_ids + eos,
                    "teacher_input_ids": tp + t_ids,
                    "pairs": [(len(sp) + i, len(tp) + j) for i, j in pairs]})  # positions of the target tokens
    return out


def cross_collate(examples: list[dict], pad_id: int, teacher_pad_id: int) -> dict:
    from ..stages.train import collate

    batch = collate(examples, pad_id)
    teacher = collate([{"input_ids": e["teacher_input_ids"], "labels": e["teacher_input_ids"]} for e in examples],
                      teacher_pad_id)
    batch["teacher_input_ids"], batch["teacher_attention_mask"] = teacher["input_ids"], teacher["attention_mask"]
    batch["pairs"] = torch.tensor([(b, s, t) for b, e in enumerate(examples) for s, t in e["pairs"]],
                                  dtype=torch.long).reshape(-1, 3)
    return batch


class CrossTokenizerTrainer(Trainer):
    """Distillation between two vocabularies: (1 - alpha) x cross-entropy on the student's tokens of the
    teacher's text + alpha x ULD (depthtune.distill.losses.uld_loss) between the two models' next-token
    distributions at the aligned positions. The teacher runs online (its full distribution is needed)."""

    def __init__(self, *args, kd: DistillConfig, teacher, counts: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.kd, self.teacher = kd, teacher
        self.counts = counts if counts is not None else {}
        self.counts.update(aligned=0, targets=0)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from .losses import uld_loss

        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
        labels = inputs["labels"][:, 1:]
        logits = out.logits[:, :-1]
        valid = labels != IGNORE
        ce = torch.nn.functional.cross_entropy(logits[valid].float(), labels[valid])
        pairs = inputs["pairs"]
        loss = (1 - self.kd.alpha) * ce
        if len(pairs) and self.kd.alpha > 0:
            with torch.no_grad():
                t_logits = self.teacher(input_ids=inputs["teacher_input_ids"].to(self.teacher.device),
                                        attention_mask=inputs["teacher_attention_mask"].to(self.teacher.device),
                                        use_cache=False).logits
            # the distribution that predicts the token at position p sits at p - 1
            s = out.logits[pairs[:, 0], pairs[:, 1] - 1]
            t = t_logits[pairs[:, 0].to(t_logits.device), pairs[:, 2].to(t_logits.device) - 1].to(s.device)
            loss = loss + self.kd.alpha * uld_loss(s, t, self.kd.temperature)
        self.counts["aligned"] += int(len(pairs))
        self.counts["targets"] += int(valid.sum())
        return (loss, out) if return_outputs else loss
