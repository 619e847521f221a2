"""On-policy distillation: the student's own samples replace a share of batches; compare and sweep run it."""
import json

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
            "--set", "select.exclude_degenerate=false", "--set", "select.min_kept=0", "--set", "train.epochs=2",
            "--set", "train.batch_size=4", "--set", "distill.on_policy=1.0"]
    assert main(args) == 0
    m = artifacts.read_json(run_dir / "distilled" / "manifest.json")
    assert m["on_policy"] == 1.0 and m["batches"] > 0 and m["on_policy_batches"] == m["batches"]
    assert m["teacher"] == "cached top-k"  # teacher-written batches would read the cache; here all went on-policy


def test_sweep_cells_can_distil_on_policy(tmp_path, tokenizer_dir):
    teacher = make_tiny_model(tmp_path / "t", tokenizer_dir, layers=4)
    sweep = {"name": "op", "base": {"data": {"max_train_prompts": 6, "max_eval_prompts": 3},
                                     "generate": {"max_new_tokens": 5}, "evaluate": {"max_new_tokens": 5},
                                     "select": {"require_correct": False, "exclude_degenerate": False},
                                     "distill": {"generate": {"k": 2}, "teacher": str(teacher)}, "train": {"epochs": 1}},
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
