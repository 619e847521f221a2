"""One sweep cell: its teacher samples -> a trained student -> the battery -> result.json.

Reads  the shared teacher samples (and top-k or ensemble shards) prepared by depthtune.experiments.sweep
Writes <cell>/cell.json (settings and resolved config), train/ (checkpoints while training:
       an interrupted cell resumes from the last one), adapter/ (LoRA methods),
       evaluate/battery.{jsonl,json}, result.json (the done marker)

Methods: full (every weight, distill.train.learning_rate), lora and prompt (a LoRA adapter of the
given rank, train.learning_rate or 2e-4). In prompt distillation the teacher's samples and
soft targets were made with the context in the prompt; the student sees the plain prompt.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from .. import artifacts, distributed
from ..config import side
from ..distill.students import shared_vocab_size
from ..distill.targets import ANSWER, retokenize, student_rows
from ..errors import DepthtuneError
from ..stages import evaluate
from ..stages.select import select
from ..stages.train import fit, wrap_lora
from .battery import battery_of, best_of, transfer
from .plan import student_key, topk_dirs


def pooled_rows(cp, samples: dict[str, list[dict]]) -> list[dict]:
    """The cell's teacher samples: its prompts only, filtered (correct, CDM line), pooled over
    teachers; sample ids carry their job so that two teachers' samples never collide."""
    wanted = set(cp.prompts)
    sel = side(cp.cfg, ("select",)).select
    rows = []
    for key in cp.jobs:
        mine = [r for r in samples[key] if r["prompt_id"] in wanted]
        kept, _, _ = select(mine, sel)
        rows += [{**r, "sample_id": f"{key}/{r['sample_id']}"} for r in kept]
    if not rows:
        raise DepthtuneError(f"no teacher sample of the cell's {len(wanted)} prompts is correct"
                             + (f" with {'CDM' if sel.selector == 'cdm' else sel.selector} >= {sel.threshold:g}"
                                if sel.threshold is not None else "")
                             + "; use more prompts, a larger distill.generate.k or a lower distill.select.threshold")
    return rows


def soft_cache(cp, folder: Path) -> dict:
    """{pooled sample id: (ids, logp)} from the one teacher's generation shards or the ensemble."""
    from ..teacher_cache import load_cache

    if cp.ensemble:
        return load_cache(folder / "ensembles" / cp.ensemble / "topk")
    key, out = cp.jobs[0], {}
    for d in topk_dirs(folder / "teachers" / key):
        out.update({f"{key}/{sid}": v for sid, v in load_cache(d).items()})
    return out


def train(cell_dir: Path, cp, rows: list[dict], folder: Path, mdl, log):
    """-> (trained model, tokenizer, examples, seconds, final loss)."""
    from ..distill.compare import curriculum_order
    from ..distill.trainer import DistillTrainer, kd_collate, kd_examples
    from ..teacher_cache import check_matches

    cfg, s = cp.cfg, cp.cell.settings
    student, tok = mdl.student(cp.student, cp.base_model)
    if tok.get_vocab() != mdl.tokenizer(cp.base_model).get_vocab():  # another tokenizer: it reads the teacher's text
        rows = retokenize(rows, tok)
    rows = curriculum_order(student_rows(rows, s["targets"], tok, cfg.data.system_prompt, cfg.data.template), cfg.distill.curriculum)
    if not rows:
        raise DepthtuneError(f"no teacher sample has an 'Answer:' line to build {s['targets']} targets from")
    full = s["method"] == "full"
    tcfg = dataclasses.replace(cfg.train, full=full, rank=s["rank"] or cfg.train.rank,
                               learning_rate=side(cfg, ("train",)).train.learning_rate if full
                               else cfg.train.learning_rate or 2e-4)
    model = student if full else wrap_lora(student, tcfg)
    model.train()
    kwargs = {"sequential": cfg.distill.curriculum != "none"}
    if cp.soft:
        t_model, t_tok = mdl.get(cp.base_model)
        vocab = shared_vocab_size(t_tok, tok, t_model.get_output_embeddings().weight.shape[0],
                                  student.get_output_embeddings().weight.shape[0])
        cache = soft_cache(cp, folder)
        check_matches(cache, rows)
        kwargs.update(trainer_cls=DistillTrainer, examples=kd_examples(rows, tok.eos_token_id, cache, cfg.distill.temperature),
                      collate_fn=lambda b, packed: kd_collate(b, tok.pad_token_id, packed), kd=cfg.distill,
                      vocab=vocab)
        if cfg.distill.on_policy > 0:  # the teacher scores the student's own samples live (on its plain prompt)
            g = cfg.generate
            kwargs.update(teacher=t_model, sampling=dict(temperature=g.temperature, top_p=g.top_p,
                                                         max_new_tokens=g.max_new_tokens, pad_id=tok.pad_token_id))
    model, seconds, loss = fit(model, tok, rows, tcfg, cell_dir / "train", log=log, report_to=cfg.report_to, **kwargs)
    return model, tok, len(rows), seconds, loss


def run_cell(cell_dir: Path, cp, plan, samples: dict, mdl, folder: Path, log=print) -> dict:
    s = cp.cell.settings
    main = distributed.is_main()  # under accelerate launch every process trains and evaluates, main writes
    if main:
        artifacts.write_json(cell_dir / "cell.json", {"settings": s, "overrides": cp.cell.overrides,
                                                      "group": cp.cell.group, "prompts": cp.prompts,
                                                      "teacher_jobs": cp.jobs, "ensemble": cp.ensemble,
                                                      "config": cp.cfg.to_dict()})
    rows = pooled_rows(cp, samples)
    model, tok, examples, seconds, loss = train(cell_dir, cp, rows, folder, mdl, log)
    if s["method"] != "full":
        if main:
            with artifacts.atomic_path(cell_dir / "adapter") as tmp:
                model.save_pretrained(tmp, safe_serialization=True)
        model = model.merge_and_unload()
    if plan.sweep.keep_models and main:
        with artifacts.atomic_path(cell_dir / "model") as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
    cfg = dataclasses.replace(cp.cfg)
    cfg.evaluate = dataclasses.replace(cfg.evaluate, max_new_tokens=cfg.distill.cot_max_new_tokens
                                       if s["targets"] == "cot" else cfg.evaluate.max_new_tokens)
    summary = evaluate.evaluate_model(cell_dir, cfg, "battery", model.eval(), tok, log=log, items=plan.battery,
                                      prefix=ANSWER if s["targets"] == "step_by_step" else "",
                                      cdm=plan.sweep.evaluate_cdm)
    mine = battery_of(cell_dir)
    teacher = best_of([battery_of(folder / "teachers" / k) for k in cp.jobs])
    before = battery_of(folder / "students" / student_key(cp.student, cp.base_model))
    result = {"settings": s, "overrides": cp.cell.overrides, "group": cp.cell.group, "examples": examples,
              "train_seconds": round(seconds, 2), "final_loss": round(float(loss), 5),
              "eval_ms_per_token": summary.get("ms_per_token"), "mean_cdm": summary.get("mean_cdm"),
              "params": summary.get("params"), "battery": mine, "teacher": teacher, "untrained": before,
              "transfer": transfer(mine, teacher)}
    if main:
        shutil.rmtree(cell_dir / "train" / "checkpoints", ignore_errors=True)
        artifacts.write_json(cell_dir / "result.json", result)
    return distributed.main_wrote(result)
