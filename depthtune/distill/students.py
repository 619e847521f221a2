"""Students for teacher -> student distillation: pruned from the teacher, and the vocabulary check.

prune_layers copies the teacher's weights into fewer decoder layers, chosen one of two ways:
    block   drop the contiguous run of layers whose input and output hidden states are closest in angle,
            measured on the run's own prompts (Gromov et al. 2024, "The Unreasonable Ineffectiveness of
            the Deeper Layers"): the layers that change the representation least go
    even    keep the first and last layers and spread the rest evenly (the DistilBERT initialisation)
On the embedded model, the mean NLL of 48 of its own correct samples (teacher: 0.94) was 2.07 with the
block plan against 4.02 evenly spread at 26 of 30 layers, and 5.52 against 8.58 at 22 (docs/results.md).
shared_vocab_size checks that a teacher and a student can be compared token by token.
"""
from __future__ import annotations

import copy

import torch

from ..errors import DepthtuneError


def default_layers(n_layers: int) -> int:
    """Layers a pruned student keeps when none are asked for: 7 in 8 (26 of 30). Cutting deeper broke the
    embedded model past what a few hundred examples heal (docs/results.md#compare)."""
    return max(1, min(n_layers - 1, round(n_layers * 7 / 8)))


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


def block_plan(model, batches: list[tuple[torch.Tensor, torch.Tensor]], keep: int) -> list[int]:
    """Layers a `keep`-layer student takes under the block plan: all but the n = L - keep contiguous layers
    l..l+n-1 whose input h_l and output h_(l+n) have the least mean angular distance arccos(cos)/pi over the
    real tokens of `batches` ([(input ids [b, t], attention mask [b, t])])."""
    n_layers = len(_decoder_layers(model))
    layer_plan(n_layers, keep)  # the same refusals
    drop = n_layers - keep
    # the first and last layers stay, as in the even plan: the block starts at 1 and ends before the last
    if n_layers - drop < 3:  # no interior block to drop (a 2-layer teacher, or keep < 3): the even plan
        return layer_plan(n_layers, keep)
    dist = torch.zeros(n_layers - drop)
    with torch.no_grad():
        for ids, mask in batches:
            hs = model(ids.to(model.device), attention_mask=mask.to(model.device), output_hidden_states=True).hidden_states
            real = mask.bool().to(model.device)
            for start in range(1, n_layers - drop):
                a, b = hs[start][real].float(), hs[start + drop][real].float()
                dist[start] += (torch.arccos(torch.nn.functional.cosine_similarity(a, b, dim=-1).clamp(-1, 1))
                                / torch.pi).sum().cpu()
    start = 1 + int(dist[1:].argmin())
    return [i for i in range(n_layers) if not start <= i < start + drop]


def _decoder_layers(model) -> torch.nn.ModuleList:
    inner = getattr(model, model.base_model_prefix, None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise DepthtuneError(f"cannot prune {type(model).__name__}: no decoder layer list at "
                             f"model.{model.base_model_prefix}.layers; give a student model instead")
    return layers


def prune_layers(teacher, keep: int, batches: list | None = None):
    """-> a new model with `keep` of the teacher's decoder layers, weights copied: the block plan measured on
    `batches` when given, else the even plan."""
    layers = _decoder_layers(teacher)
    plan = block_plan(teacher, batches, keep) if batches else layer_plan(len(layers), keep)
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


def prompt_batches(tok, items: list[dict], system_prompt=None, template: str = "auto", n: int = 32,
                   batch: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first `n` prompts as the model sees them, in padded batches: what the block plan measures on."""
    from ..prompting import prompt_ids

    seqs = [prompt_ids(tok, it, system_prompt, template) for it in items[:n]]
    out = []
    for i in range(0, len(seqs), batch):
        part = seqs[i:i + batch]
        width = max(map(len, part))
        ids = torch.zeros(len(part), width, dtype=torch.long)
        mask = torch.zeros(len(part), width, dtype=torch.long)
        for j, s in enumerate(part):
            ids[j, :len(s)], mask[j, :len(s)] = torch.tensor(s), 1
        out.append((ids, mask))
    return out


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
