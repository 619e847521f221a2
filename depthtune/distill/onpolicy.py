"""On-policy distillation (GKD, Agarwal et al. 2024): on a share lambda of batches the student answers
the prompts itself and learns the teacher's distribution on its own tokens.

    batch (prompt + teacher-written completion, labels on the completion)
      -> keep each row's prompt, let the student sample a completion (no gradient)
      -> prompt + student completion (+ eos when it stopped), labels on the student's tokens

The trainer then scores those tokens with the online teacher and trains on the divergence alone (the
student's own tokens are no cross-entropy target). Whether a batch goes on-policy is a seeded draw per
(seed, optimiser step, micro-batch), so a resumed run makes the same choices.

Why not TRL's GKDTrainer / DistillationTrainer: both take their own prompt datasets and run their own
generation and loss over full logits; neither reads a cached top-k teacher or our teacher-written samples
for the off-policy share, so mixing the two (and comparing with off-policy runs on the same loss) needs
the loss and trainer depthtune already has. The divergence itself is checked against TRL's
generalized_jsd_loss in tests/distill/test_loss_properties.py.
"""
from __future__ import annotations

import random

import torch

from ..backends import left_pad
from ..stages.train import IGNORE, batcher


def goes_on_policy(share: float, seed: int, step: int, index: int) -> bool:
    return share > 0 and random.Random(f"{seed}:{step}:{index}").random() < share


@torch.no_grad()
def student_batch(model, batch: dict, *, pad_id: int, temperature: float, top_p: float, max_new_tokens: int,
                  seed: int) -> dict:
    """Replace each row's completion by one the student samples for its prompt (see the module docstring).
    It ends at the first of the model's stop tokens (every id its generation config stops on, as generate
    does), never at a pad."""
    from ..backends.local import stop_ids

    stops = stop_ids(model.module if hasattr(model, "module") else model)
    prompts = []
    for row_ids, row_labels in examples_of(batch):
        first = int((row_labels != IGNORE).nonzero()[0]) if (row_labels != IGNORE).any() else int(row_labels.numel())
        prompts.append(row_ids[:first].tolist())
    device = next(model.parameters()).device
    input_ids, mask = left_pad(prompts, pad_id, device)
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=True,
                         temperature=temperature, top_p=top_p, top_k=0, pad_token_id=pad_id)
    model.train(was_training)
    examples = []
    for p, seq in zip(prompts, out[:, input_ids.shape[1]:].tolist()):
        end = next((t for t, x in enumerate(seq) if x in stops), None)
        completion = seq[:end + 1] if end is not None else seq  # the eos it chose is learned too
        examples.append({"input_ids": p + completion, "labels": [IGNORE] * len(p) + completion})
    new = batcher(pad_id, "position_ids" in batch and "attention_mask" not in batch)(examples)
    new["on_policy"] = True
    return new


def examples_of(batch: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input ids, labels) of each example in a batch: its rows when padded, its segments when packed
    (one row whose position ids restart at every example)."""
    if "attention_mask" in batch or "position_ids" not in batch:
        return list(zip(batch["input_ids"], batch["labels"]))
    pos, ids, labels = batch["position_ids"][0], batch["input_ids"][0], batch["labels"][0]
    starts = (pos == 0).nonzero().flatten().tolist() + [len(pos)]
    return [(ids[a:b], labels[a:b]) for a, b in zip(starts[:-1], starts[1:])]
