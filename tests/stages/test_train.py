"""Prompt masking, LoRA/full training, merging, and resuming training from a checkpoint."""
import pytest
import torch

from depthtune import artifacts, models
from depthtune.config import RunConfig, TrainConfig
from depthtune.stages import merge, train


def rows(n=6):
    return [{"prompt_ids": [1, 10 + i, 11, 12], "completion_ids": [20 + i, 21, 22], "finished": i % 2 == 0}
            for i in range(n)]


def test_prompt_tokens_are_masked_and_eos_added_when_finished():
    ex = train.build_example(rows()[0], eos_id=2)
    assert ex["input_ids"] == [1, 10, 11, 12, 20, 21, 22, 2]
    assert ex["labels"] == [-100] * 4 + [20, 21, 22, 2]
    cut = train.build_example(rows()[1], eos_id=2)  # stopped by max_new_tokens: no eos to learn
    assert cut["labels"] == [-100] * 4 + [21, 21, 22]


def test_collate_right_pads_and_masks_padding():
    a = train.build_example(rows()[0], 2)
    b = {"input_ids": [5, 6], "labels": [-100, 6]}
    batch = train.collate([a, b], pad_id=0)
    assert batch["input_ids"][1].tolist() == [5, 6] + [0] * 6
    assert batch["attention_mask"][1].tolist() == [1, 1] + [0] * 6
    assert batch["labels"][1].tolist() == [-100, 6] + [-100] * 6


def _setup(tmp_path, tiny_model_dir, **train_kw):
    cfg = RunConfig()
    cfg.model.name = str(tiny_model_dir)
    cfg.train = TrainConfig(epochs=2, batch_size=2, save_steps=2, learning_rate=5e-3, **train_kw)
    run_dir = tmp_path / "run"
    artifacts.write_jsonl(run_dir / "select" / "selected.jsonl", rows())
    return cfg, run_dir


def _loss(model, tok):
    batch = train.collate([train.build_example(r, tok.eos_token_id) for r in rows()], tok.pad_token_id)
    with torch.no_grad():
        return model(**batch).loss.item()


def test_lora_trains_only_the_adapter_and_merges_to_the_same_function(tmp_path, tiny_model_dir):
    cfg, run_dir = _setup(tmp_path, tiny_model_dir)
    tok = models.load_tokenizer(cfg.model.name)
    base = models.load_model(cfg.model.name)
    before_w = base.model.layers[0].self_attn.q_proj.weight.clone()
    before = _loss(base, tok)
    manifest, peft_model = train.run(run_dir, cfg, base, tok)
    assert manifest["method"] == "lora" and 0 < manifest["trainable_params"] < manifest["base_params"]
    assert (run_dir / "train" / "adapter" / "adapter_config.json").exists()
    assert not (run_dir / "train" / "checkpoints").exists()
    after = _loss(peft_model, tok)
    assert after < before - 0.05
    assert torch.equal(peft_model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight, before_w)

    # merging from disk gives a plain model with the adapter's function
    m, _ = merge.run(run_dir, cfg, lambda name: (models.load_model(name), models.load_tokenizer(name)))
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(run_dir / m["model_dir"])
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert _loss(merged, tok) == pytest.approx(after, abs=1e-4)


def test_full_finetuning_changes_base_weights(tmp_path, tiny_model_dir):
    cfg, run_dir = _setup(tmp_path, tiny_model_dir, full=True)
    cfg.train.learning_rate = 1e-3
    tok, base = models.load_tokenizer(cfg.model.name), models.load_model(cfg.model.name)
    w = base.model.layers[0].mlp.up_proj.weight.clone()
    manifest, model = train.run(run_dir, cfg, base, tok)
    assert manifest["method"] == "full" and manifest["trainable_params"] == manifest["base_params"]
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, w)
    m, _ = merge.run(run_dir, cfg, None)
    assert m["model_dir"] == "train/model" and (run_dir / "train" / "model" / "config.json").exists()


def test_interrupted_training_resumes_from_its_last_checkpoint(tmp_path, tiny_model_dir, monkeypatch):
    from transformers import Trainer

    cfg, run_dir = _setup(tmp_path, tiny_model_dir)  # 6 examples / batch 2 x 2 epochs = 6 steps, ckpt every 2
    tok = models.load_tokenizer(cfg.model.name)
    real_step, calls = Trainer.training_step, {"n": 0}

    def dying_step(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 4:  # dies during step 4: checkpoint-2 exists
            raise KeyboardInterrupt
        return real_step(self, *a, **kw)

    monkeypatch.setattr(Trainer, "training_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train.run(run_dir, cfg, models.load_model(cfg.model.name), tok)
    assert not artifacts.is_done(run_dir / "train")
    assert (run_dir / "train" / "checkpoints" / "checkpoint-2").exists()

    calls["n"] = -100  # let it finish
    steps = []
    monkeypatch.setattr(Trainer, "training_step", lambda self, *a, **kw: steps.append(1) or real_step(self, *a, **kw))
    manifest, _ = train.run(run_dir, cfg, models.load_model(cfg.model.name), tok)
    assert len(steps) == 4  # steps 3..6 only: 1 and 2 were not redone
    assert manifest["train_seconds"] > 0 and artifacts.is_done(run_dir / "train")


def test_training_is_reproducible_whatever_the_process_sampled_before(tmp_path, tiny_model_dir):
    """The same seed gives bit-identical adapters even when the process drew other random numbers first
    (in a real run generation and scoring do; a resumed run skips them), so a rerun matches exactly."""
    outs = []
    for i, noise in enumerate((0, 1000)):
        cfg, _ = _setup(tmp_path / str(i), tiny_model_dir)
        run_dir = tmp_path / str(i) / "run"
        torch.manual_seed(noise)
        torch.randn(noise + 1)  # what came before differs
        m, model = train.run(run_dir, cfg, models.load_model(cfg.model.name), models.load_tokenizer(cfg.model.name))
        outs.append((m["final_loss"], {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}))
    assert outs[0][0] == outs[1][0]
    assert all(torch.equal(outs[0][1][n], outs[1][1][n]) for n in outs[0][1])


def varied(n=5):
    """Examples of different lengths: a padded batch of them is mostly padding."""
    return [{"prompt_ids": [1] + list(range(30, 30 + 3 * i + 2)), "completion_ids": list(range(60, 62 + 4 * i)),
             "finished": True} for i in range(n)]


def test_packed_batches_give_the_padded_loss_and_gradient(tiny_model_dir):
    """Padding-free (one row, position ids restarting per example) is the same function as padding."""
    model, tok = models.load_model(str(tiny_model_dir), "float32", "cpu"), models.load_tokenizer(str(tiny_model_dir))
    examples = [train.build_example(r, tok.eos_token_id) for r in varied()]
    padded, flat = train.collate(examples, tok.pad_token_id), train.packed(examples)
    assert flat["input_ids"].shape[0] == 1 and "attention_mask" not in flat
    assert flat["input_ids"].numel() == sum(len(e["input_ids"]) for e in examples) < padded["input_ids"].numel()
    losses, grads = [], []
    for batch in (padded, flat):
        model.zero_grad()
        out = model(**batch, use_cache=False)  # as training runs it (train.fit turns the cache off)
        out.loss.backward()
        losses.append(out.loss.item())
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def test_packed_distillation_loss_equals_padded(tiny_model_dir):
    """The chunked KD loss reads the packed row's targets in the padded batch's order (cached rows line up)."""
    from transformers import TrainingArguments

    from depthtune.config import DistillConfig
    from depthtune.distill.trainer import DistillTrainer, kd_collate, kd_examples
    from depthtune.teacher_cache import Rows

    model, tok = models.load_model(str(tiny_model_dir), "float32", "cpu"), models.load_tokenizer(str(tiny_model_dir))
    rs = [{**r, "sample_id": f"s{i}"} for i, r in enumerate(varied())]
    g = torch.Generator().manual_seed(0)
    cache = {}
    for r in rs:
        n = len(r["completion_ids"]) + 1
        logits = torch.randn(n, model.config.vocab_size, generator=g)
        lp, ids = torch.log_softmax(logits, -1).topk(5, -1)
        cache[r["sample_id"]] = Rows(ids, lp)
    examples = kd_examples(rs, tok.eos_token_id, cache)
    trainer = DistillTrainer(model=model, args=TrainingArguments(output_dir="/tmp/unused-kd", use_cpu=True,
                                                                  report_to=[]),
                             kd=DistillConfig(temperature=2.0), vocab=model.config.vocab_size)
    values = [trainer.compute_loss(model, kd_collate(examples, tok.pad_token_id, flat)).item() for flat in (False, True)]
    assert values[0] == pytest.approx(values[1], rel=1e-5)


def test_training_padding_free_makes_the_padded_run_s_adapter(tmp_path, tiny_model_dir):
    """The whole train stage, padded against packed, same seed: the same adapter, within float tolerance."""
    adapters = []
    for flat in (False, True):
        cfg, run_dir = _setup(tmp_path / str(flat), tiny_model_dir, padding_free=flat, dropout=0.0)  # no random masks
        artifacts.write_jsonl(run_dir / "select" / "selected.jsonl", varied(6))
        manifest, model = train.run(run_dir, cfg, models.load_model(cfg.model.name), models.load_tokenizer(cfg.model.name))
        adapters.append({n: p.detach().clone() for n, p in model.named_parameters() if "lora" in n})
    assert adapters[0].keys() == adapters[1].keys()
    for name in adapters[0]:
        assert torch.allclose(adapters[0][name], adapters[1][name], rtol=1e-3, atol=1e-5), name


def test_packing_is_checked_on_the_model_before_training_on_it(tiny_model_dir):
    """A model that keeps packed examples apart passes; one made to ignore position ids (so the second
    example attends to the first as one long text) fails, and training would pad instead."""
    from depthtune import models
    from depthtune.stages.train import packing_works

    model = models.load_model(str(tiny_model_dir), "float32", "cpu")
    examples = [{"input_ids": list(range(5, 17))}, {"input_ids": list(range(20, 32))}]
    assert packing_works(model, examples)
    real = model.forward

    def one_long_text(input_ids=None, position_ids=None, **kw):  # what attention without a packed mask does
        return real(input_ids=input_ids, **kw)

    model.forward = one_long_text
    assert not packing_works(model, examples)


@pytest.mark.parametrize("last", [True, False])
def test_the_last_steps_checkpoint_is_written_only_for_callers_that_keep_it(tmp_path, tiny_model_dir, last):
    """6 examples / batch 2 x 1 epoch = 3 steps, a checkpoint every 2: the Trainer adds one of step 3, which
    a sweep cell resumes from if killed while it evaluates; the stages, which write the model at once, skip it."""
    tok = models.load_tokenizer(str(tiny_model_dir))
    cfg = TrainConfig(epochs=1, batch_size=2, save_steps=2, learning_rate=5e-3, full=True)
    train.fit(models.load_model(str(tiny_model_dir)), tok, rows(), cfg, tmp_path, log=lambda *_: None,
              checkpoint_last=last)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("checkpoint-*")) == \
        ["checkpoint-2"] + (["checkpoint-3"] if last else [])
