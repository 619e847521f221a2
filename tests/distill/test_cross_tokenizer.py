"""Distillation between two vocabularies: ULD's sorted-probability Wasserstein loss by its properties and
against a plain numpy implementation, character-offset alignment, and `compare` with a teacher and a
student whose tokenizers were trained here (the `tokenizers` library) and differ; the combinations that
cannot work are refused in one line."""
import json

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from depthtune.cli import main
from depthtune.distill.losses import uld_loss
from depthtune.distill.targets import aligned_positions

TEXT = [f"What is {a} plus {b}? The answer is {a + b}." for a in range(30) for b in range(0, 30, 3)] + \
       ["The capital of France is Paris.", "Tom has five apples and buys two more, so he has seven."] * 20


def uld_numpy(ps: np.ndarray, pt: np.ndarray) -> float:
    """The textbook form: sort each probability vector, pad the shorter with zeros, mean L1 over rows."""
    out = []
    for a, b in zip(ps, pt):
        a, b = np.sort(a)[::-1], np.sort(b)[::-1]
        n = max(len(a), len(b))
        out.append(np.abs(np.pad(a, (0, n - len(a))) - np.pad(b, (0, n - len(b)))).sum())
    return float(np.mean(out))


def softmax(z, tau=1.0):
    e = np.exp((z - z.max(-1, keepdims=True)) / tau)
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_uld_matches_the_textbook_form_and_is_zero_for_the_same_distribution(tau):
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(6, 40, generator=g, dtype=torch.float64), torch.randn(6, 55, generator=g, dtype=torch.float64)
    assert uld_loss(zs, zt, tau).item() == pytest.approx(uld_numpy(softmax(zs.numpy(), tau), softmax(zt.numpy(), tau)),
                                                         rel=1e-10)
    assert uld_loss(zt, zt, tau).item() == pytest.approx(0.0, abs=1e-12)
    perm = torch.randperm(55, generator=g)  # which token is which does not matter to ULD
    assert uld_loss(zs, zt[:, perm], tau).item() == pytest.approx(uld_loss(zs, zt, tau).item(), rel=1e-12)
    padded = torch.cat([zt, torch.full((6, 10), -1e4, dtype=torch.float64)], -1)  # tokens with no mass
    assert uld_loss(zs, padded, tau).item() == pytest.approx(uld_loss(zs, zt, tau).item(), rel=1e-9)


def test_a_gradient_step_on_uld_moves_the_student_towards_the_teachers_shape():
    g = torch.Generator().manual_seed(1)
    zs, zt = torch.randn(4, 30, generator=g).requires_grad_(True), torch.randn(4, 45, generator=g) * 4
    before = uld_loss(zs, zt)
    before.backward()
    after = uld_loss(zs.detach() - 0.5 * zs.grad, zt)
    assert after < before


def trained_tokenizer(vocab: int, folder) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<unk>", "<pad>", "</s>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    from tokenizers import decoders

    raw.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")
    tok.save_pretrained(folder)
    return tok


def tiny(folder, vocab: int, layers: int, seed: int):
    tok = trained_tokenizer(vocab, folder)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def test_aligned_positions_pair_tokens_that_start_at_the_same_character(tmp_path):
    a, b = trained_tokenizer(400, tmp_path / "a"), trained_tokenizer(265, tmp_path / "b")
    text = "The capital of France is Paris, and 12 plus 9 is 21."
    s_ids, t_ids, pairs = aligned_positions(text, b, a)
    assert len(s_ids) > len(t_ids) and 0 < len(pairs) < len(s_ids) and pairs[0] == (0, 0)
    s_off = b(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    t_off = a(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert all(s_off[i][0] == t_off[j][0] for i, j in pairs)


@pytest.fixture
def pair(tmp_path):
    teacher, student = tiny(tmp_path / "teacher", 400, 4, 0), tiny(tmp_path / "student", 265, 2, 1)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {a} plus {b}?", "answer": str(a + b)}) + "\n"
                            for a in range(2, 9) for b in (1, 3)))
    return teacher, student, data


def compare_args(run_dir, teacher, student, data, *extra):
    return ["compare", "--run-dir", str(run_dir), "--teacher", str(teacher), "--student", str(student),
            "--data", str(data), "--template", "raw", "--max-eval-prompts", "3", "--set", "generate.max_new_tokens=6",
            "--set", "evaluate.max_new_tokens=6", "--set", "distill.select={selector: random}",
            "--set", "select.exclude_degenerate=false", "--set", "select.min_kept=0", "--set", "train.epochs=1",
            "--set", "train.batch_size=4", "--set", "evaluate.cdm=false", "--set", "score.cdm=false", *extra]


def test_compare_distils_across_tokenizers_with_uld(pair, tmp_path):
    teacher, student, data = pair
    run_dir = tmp_path / "cmp"
    assert main(compare_args(run_dir, teacher, student, data, "--online")) == 0
    m = json.loads((run_dir / "distilled" / "manifest.json").read_text())
    assert m["teacher"] == "online, across tokenizers (ULD)" and m["aligned_positions"] > 0
    assert m["aligned_positions"] <= m["target_tokens"]
    assert json.loads((run_dir / "student" / "manifest.json").read_text())["cross_tokenizer"] is True


@pytest.mark.parametrize("extra, expected", [
    ([], "a cached top-k names the teacher's own token ids"),
    (["--online", "--set", "distill.on_policy=0.5"], "on-policy distillation has the teacher score the student's"),
])
def test_what_cannot_cross_tokenizers_is_refused_in_one_line(pair, tmp_path, capsys, extra, expected):
    teacher, student, data = pair
    run_dir = tmp_path / "cmp"
    assert main(compare_args(run_dir, teacher, student, data, *extra)) == 2
    err = capsys.readouterr().err.strip()
    sizes = [len(PreTrainedTokenizerFast.from_pretrained(p)) for p in (teacher, student)]
    assert "\n" not in err and f"the teacher's tokenizer ({sizes[0]} tokens) is not the student's ({sizes[1]} tokens)" in err
    assert expected in err
    assert not (run_dir / "generate").exists()  # refused before any teacher work
