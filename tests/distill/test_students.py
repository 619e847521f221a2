import pytest
import torch
from helpers import make_tiny_model

from depthtune import models
from depthtune.distill.students import layer_plan, prune_layers, shared_vocab_size
from depthtune.errors import DepthtuneError


def test_layer_plan_keeps_first_and_last_and_spreads_the_rest():
    assert layer_plan(30, 15)[0] == 0 and layer_plan(30, 15)[-1] == 29 and len(layer_plan(30, 15)) == 15
    assert layer_plan(6, 3) == [0, 2, 5]  # round(2.5) = 2: ties go to the even index
    assert layer_plan(5, 2) == [0, 4]
    assert layer_plan(5, 1) == [0]
    with pytest.raises(DepthtuneError, match="leaves no layer"):
        layer_plan(5, 0)
    with pytest.raises(DepthtuneError, match="not smaller"):
        layer_plan(5, 5)


def test_pruned_student_copies_teacher_weights_and_runs(tmp_path, tokenizer_dir):
    path = make_tiny_model(tmp_path / "t4", tokenizer_dir, layers=4)
    teacher = models.load_model(str(path))
    student = prune_layers(teacher, 2)
    assert student.config.num_hidden_layers == 2 and len(student.model.layers) == 2
    assert torch.equal(student.model.layers[1].mlp.up_proj.weight, teacher.model.layers[3].mlp.up_proj.weight)
    assert student.model.layers[1].mlp.up_proj.weight.data_ptr() != teacher.model.layers[3].mlp.up_proj.weight.data_ptr()
    assert len(teacher.model.layers) == 4  # the teacher is untouched
    ids = torch.tensor([[1, 5, 9, 13]])
    out = student.generate(input_ids=ids, max_new_tokens=3, do_sample=False, pad_token_id=2)
    assert out.shape == (1, 7)
    student.save_pretrained(tmp_path / "s")
    reloaded = models.load_model(str(tmp_path / "s"))
    assert torch.allclose(reloaded(input_ids=ids).logits, student(input_ids=ids).logits, atol=1e-5)


def test_vocabulary_check(tokenizer_dir, tmp_path):
    from tokenizers import Tokenizer
    from tokenizers import models as tm
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    n = len(tok)
    assert shared_vocab_size(tok, tok, n, n + 64) == n  # padded rows are reconciled
    other = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(tm.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, "[UNK]")))
    with pytest.raises(DepthtuneError, match="vocabularies differ.*id 0"):
        shared_vocab_size(tok, other, n, 3)
    with pytest.raises(DepthtuneError, match="fewer output rows"):
        shared_vocab_size(tok, tok, n - 1, n)


def test_the_block_plan_drops_the_layers_that_change_the_hidden_state_least(tmp_path, tokenizer_dir):
    """Two layers of a tiny model made identities (their output projections zeroed, so the residual
    stream passes through): the block plan drops exactly those, and the pruned model runs."""
    from helpers import make_tiny_model

    from depthtune import models
    from depthtune.distill.students import block_plan, prompt_batches

    path = make_tiny_model(tmp_path / "six", tokenizer_dir, layers=6)
    model, tok = models.load_model(str(path), "float32", "cpu"), models.load_tokenizer(str(path))
    layers = model.model.layers
    n = len(layers)
    assert n >= 4
    for i in (1, 2):
        torch.nn.init.zeros_(layers[i].self_attn.o_proj.weight)
        torch.nn.init.zeros_(layers[i].mlp.down_proj.weight)
    batches = prompt_batches(tok, [{"prompt": f"What is {a} + {a}?"} for a in range(5)], batch=2)
    assert block_plan(model, batches, n - 2) == [0] + list(range(3, n))
    pruned = prune_layers(model, n - 2, batches)
    assert pruned.config.pruned_from_layers == [0] + list(range(3, n))
    ids, mask = batches[0]
    assert pruned(ids, attention_mask=mask).logits.shape[:2] == ids.shape


def test_the_block_plan_falls_back_to_the_even_plan_when_no_interior_block_exists(tmp_path, tokenizer_dir):
    from helpers import make_tiny_model

    from depthtune import models
    from depthtune.distill.students import block_plan, layer_plan, prompt_batches

    path = make_tiny_model(tmp_path / "two", tokenizer_dir, layers=2)
    model, tok = models.load_model(str(path), "float32", "cpu"), models.load_tokenizer(str(path))
    batches = prompt_batches(tok, [{"prompt": "What is 2 + 2?"}])
    assert block_plan(model, batches, 1) == layer_plan(2, 1) == [0]
    assert prune_layers(model, 1, batches).config.num_hidden_layers == 1
