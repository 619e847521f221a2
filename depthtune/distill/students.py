"""Students for teacher -> student distillation: pruned from the teacher, and the vocabulary check.

prune_layers keeps the first and last decoder layers and spreads the rest evenly, copying
the teacher's weights (the DistilBERT / Minitron depth-pruning initialisation).
shared_vocab_size checks that a teacher and a student can be compared token by token.
"""
from __future__ import annotations

import copy

import torch

from ..errors import DepthtuneError


def layer_plan(n_layers: int, keep: int) -> list[int]:
    """Indices of the teacher layers a `keep`-layer student takes: first, last, evenly between."""
    if keep < 1:
        raise DepthtuneError(f"pruning to {keep} layers leaves no layer; keep at least 1 of {n_layers}")
    if keep >= n_layers:
        raise DepthtuneError(f"a {keep}-layer student is not smaller than the {n_layers}-layer teacher; "
                             f"keep fewer than {n_layers} layers")
    if keep == 1:
        return [0]
    return sorted({round(i * (n_layers - 1) / (keep - 1)) for i in range(keep)})


def _decoder_layers(model) -> torch.nn.ModuleList:
    inner = getattr(model, model.base_model_prefix, None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise DepthtuneError(f"cannot prune {type(model).__name__}: no decoder layer list at "
                             f"model.{model.base_model_prefix}.layers; give a student model instead")
    return layers


def prune_layers(teacher, keep: int):
    """-> a new model with `keep` of the teacher's decoder layers, weights copied."""
    layers = _decoder_layers(teacher)
    plan = layer_plan(len(layers), keep)
    student = copy.deepcopy(teacher)
    inner = getattr(student, student.base_model_prefix)
    inner.layers = torch.nn.ModuleList([inner.layers[i] for i in plan])
    for new_idx, layer in enumerate(inner.layers):
        attn = getattr(layer, "self_attn", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = new_idx  # the KV cache is indexed by position in the new stack
    student.config.num_hidden_layers = len(plan)
    if getattr(student.config, "layer_types", None):
        student.config.layer_types = [student.config.layer_types[i] for i in plan]
    student.config.pruned_from_layers = plan
    return student


def shared_vocab_size(teacher_tok, student_tok, teacher_rows: int, student_rows: int) -> int:
    """How many logit columns teacher and student share.

    Equal tokenizers share len(tokenizer) columns; an embedding matrix with more rows than
    the tokenizer has tokens only pads (unused rows), and the extra columns are dropped.
    Different tokenizers stop with the first tokens that differ.
    """
    t_vocab, s_vocab = teacher_tok.get_vocab(), student_tok.get_vocab()
    if t_vocab != s_vocab:
        t_by_id = {i: t for t, i in t_vocab.items()}
        s_by_id = {i: t for t, i in s_vocab.items()}
        diff = [i for i in sorted(set(t_by_id) | set(s_by_id)) if t_by_id.get(i) != s_by_id.get(i)]
        shown = ", ".join(f"id {i}: teacher {t_by_id.get(i)!r} vs student {s_by_id.get(i)!r}" for i in diff[:3])
        raise DepthtuneError(f"teacher and student vocabularies differ in {len(diff)} ids ({shown}); logit "
                             f"distillation needs one tokenizer: use sequence-level distillation instead")
    n = len(teacher_tok)
    if min(teacher_rows, student_rows) < n:
        raise DepthtuneError(f"a model has fewer output rows ({min(teacher_rows, student_rows)}) than its "
                             f"tokenizer has tokens ({n}); the model and tokenizer do not belong together")
    return n
