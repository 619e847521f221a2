"""`depthtune compare`: teacher, student untouched, student trained alone, student distilled.

prepare -> student (given or pruned; checked) -> teacher generate (+ cached top-k) -> score -> select
        -> train alone (reference answers, cross-entropy) -> train distilled (teacher's samples,
           soft targets) -> evaluate all four on the held-out prompts -> report.md, report.html, compare.json

Layout of <run>: the depthtune run stages (prompts, generate, score, select, evaluate) plus
student/, alone/, distilled/ (each a model dir + manifest), report.{md,html} and compare.json.
"""
from __future__ import annotations

import copy
import dataclasses
import shutil
from pathlib import Path

from .. import artifacts, distributed, models
from ..backends.llama_server import choose_backend
from ..config import RunConfig, side
from ..errors import DepthtuneError
from ..prompting import prompt_ids
from ..stages import evaluate
from ..stages.pipeline import Session, run_stages, step
from ..stages.train import fit, wrap_lora
from .students import default_layers, prompt_batches, prune_layers, shared_vocab_size
from .targets import ANSWER, COT_SYSTEM, retokenize, student_rows


def soft_targets(cfg: RunConfig) -> bool:
    """Whether the student learns the teacher's distributions (not only its text)."""
    return cfg.distill.alpha > 0 and cfg.distill.targets in ("answers", "cot")


def teacher_config(cfg: RunConfig) -> RunConfig:
    """The teacher-side settings: the distill section decides teacher, k, top-k and the CDM line."""
    t = side(cfg, ("generate", "select"))
    t.model.name = cfg.distill.teacher
    t.generate.topk = cfg.distill.topk if soft_targets(cfg) and not cfg.distill.online else 0
    t.generate.topk_taus = sorted({1.0, cfg.distill.temperature})
    if cfg.distill.targets != "answers":  # the teacher is asked to reason before answering
        t.data.system_prompt = COT_SYSTEM
    return t


def student_config(cfg: RunConfig) -> RunConfig:
    """The student side: plain prompts (no chain-of-thought instruction); no soft targets for
    modes whose targets are not the teacher's own tokens."""
    s = copy.deepcopy(teacher_config(cfg))
    s.data.system_prompt = cfg.data.system_prompt
    if not soft_targets(cfg):
        s.distill.alpha = 0.0
    return s


def reference_rows(run_dir: Path, tok, system_prompt, template: str = "auto") -> list[dict]:
    """Training rows for the student alone: each training prompt with its reference answer."""
    rows = []
    for item in artifacts.read_jsonl(Path(run_dir) / "prompts" / "train.jsonl"):
        if item.get("answer") is None:
            continue
        rows.append({"sample_id": f"{item['id']}#ref", "prompt_ids": prompt_ids(tok, item, system_prompt, template),
                     "completion_ids": tok(item["answer"], add_special_tokens=False)["input_ids"], "finished": True})
    if not rows:
        raise DepthtuneError("the prompts carry no reference answers, so there is no 'student alone' to compare with; "
                             "give --answer-field")
    return rows


def build_student(run_dir: Path, cfg: RunConfig, teacher, tok) -> dict:
    stage = Path(run_dir) / "student"
    d = cfg.distill
    if d.student:
        student, s_tok = models.load_model(d.student, cfg.model.dtype, cfg.model.device), models.load_tokenizer(d.student)
    else:
        keep = default_layers(teacher.config.num_hidden_layers) if d.student_layers is None else d.student_layers
        batches = None
        if d.prune == "block":
            items = artifacts.read_jsonl(Path(run_dir) / "prompts" / "train.jsonl")
            batches = prompt_batches(tok, items, cfg.data.system_prompt, cfg.data.template)
        student, s_tok = prune_layers(teacher, keep, batches), tok
    plan = getattr(student.config, "pruned_from_layers", None)
    t_params, s_params = models.count_params(teacher), models.count_params(student)
    if s_params >= t_params:
        raise DepthtuneError(f"the teacher ({t_params:,} parameters) is not larger than the student "
                             f"({s_params:,}); swap them or pick a smaller student")
    cross = tok.get_vocab() != s_tok.get_vocab()
    if cross:  # another vocabulary: the student reads the teacher's text; soft targets through ULD, online
        check_cross_tokenizer(cfg, tok, s_tok)
        vocab = None
    elif cfg.distill.alpha > 0:
        vocab = shared_vocab_size(tok, s_tok, teacher.get_output_embeddings().weight.shape[0],
                                  student.get_output_embeddings().weight.shape[0])
    else:  # sequence-level only
        vocab = None
    with artifacts.atomic_path(stage / "model") as tmp:
        student.save_pretrained(tmp, safe_serialization=True)
        s_tok.save_pretrained(tmp)
    return artifacts.write_manifest(stage, "student", cfg.to_dict(), source=d.student or "pruned teacher",
                                    layers_kept=plan, params=s_params, teacher_params=t_params, shared_vocab=vocab,
                                    cross_tokenizer=cross and cfg.distill.alpha > 0)


def check_cross_tokenizer(cfg: RunConfig, teacher_tok, student_tok) -> None:
    """What a student with another tokenizer can learn from, refused in one line before any teacher work:
    the teacher's text (sequence-level, alpha 0) always; its distributions (alpha > 0) through ULD, which
    needs the online teacher's full distribution, on teacher-written text."""
    d = cfg.distill
    mismatch = (f"the teacher's tokenizer ({len(teacher_tok):,} tokens) is not the student's "
                f"({len(student_tok):,} tokens)")
    if d.alpha > 0 and not d.online:
        raise DepthtuneError(f"{mismatch}: a cached top-k names the teacher's own token ids, which the student does "
                             f"not have; add --online (logit distillation across tokenizers through ULD), or set "
                             f"distill.alpha=0 (sequence-level)")
    if d.alpha > 0 and d.on_policy > 0:
        raise DepthtuneError(f"{mismatch}: on-policy distillation has the teacher score the student's own tokens; "
                             f"set distill.on_policy=0, or use a student with the teacher's tokenizer")


def curriculum_order(rows: list[dict], how: str) -> list[dict]:
    """Easy -> hard: by CDM (deepest first) or by difficulty level (then deepest first)."""
    if how == "cdm":
        return sorted(rows, key=lambda r: (-(r.get("cdm") or 0.0), r["sample_id"]))
    if how == "level":
        return sorted(rows, key=lambda r: (r.get("level") or 0, -(r.get("cdm") or 0.0), r["sample_id"]))
    return rows


def train_student(run_dir: Path, cfg: RunConfig, name: str, rows: list[dict], teacher=None, log=print,
                  remote=None) -> dict:
    """Train a fresh copy of the untouched student on rows: plain CE (alone) or soft targets (distilled)."""
    from ..teacher_cache import check_matches, load_cache
    from .trainer import DistillTrainer, kd_collate, kd_examples

    run_dir = Path(run_dir)
    stage = run_dir / name
    s_manifest = artifacts.read_manifest(run_dir / "student", "student")
    path = str(run_dir / "student" / "model")
    student, tok = models.load_model(path, cfg.model.dtype, cfg.model.device), models.load_tokenizer(path)
    train_cfg = dataclasses.replace(side(cfg, ("train",)).train, full=cfg.distill.method == "full")
    student = student if train_cfg.full else wrap_lora(student, train_cfg)
    student.train()
    kwargs, stats = {}, {}
    if name == "distilled" and s_manifest.get("cross_tokenizer"):
        kwargs.update(cross_tokenizer_training(rows, cfg, tok, teacher, stats))
    elif name == "distilled":
        if s_manifest["shared_vocab"] is None:  # another vocabulary: the student reads the teacher's text
            rows = retokenize(rows, tok)
        rows = curriculum_order(student_rows(rows, cfg.distill.targets, tok, cfg.data.system_prompt, cfg.data.template),
                                cfg.distill.curriculum)
        if not rows:
            raise DepthtuneError(f"no teacher sample has an 'Answer:' line to build {cfg.distill.targets} targets "
                                 f"from; use --set distill.targets=cot or answers")
        kwargs["sequential"] = cfg.distill.curriculum != "none"
        if cfg.distill.alpha > 0:  # soft targets; with alpha = 0 it is plain cross-entropy on the teacher's text
            cache = None
            if not cfg.distill.online:  # cached top-k for the teacher-written batches (on-policy ones go online)
                cache = load_cache(run_dir / "generate" / "topk")
                check_matches(cache, rows)
            g = cfg.generate
            sampling = dict(temperature=g.temperature, top_p=g.top_p, max_new_tokens=g.max_new_tokens,
                            pad_id=tok.pad_token_id)
            kwargs.update(trainer_cls=DistillTrainer, examples=kd_examples(rows, tok.eos_token_id, cache, cfg.distill.temperature),
                          collate_fn=lambda b, packed: kd_collate(b, tok.pad_token_id, packed), kd=cfg.distill,
                          teacher=teacher, remote=remote,
                          sampling=sampling, counts=stats, vocab=s_manifest["shared_vocab"])
    model, seconds, loss = fit(student, tok, rows, train_cfg, stage, log=log, report_to=cfg.report_to,
                               run_name=f"{Path(run_dir).resolve().name}-{name}", log_dir=Path(run_dir) / "logs" / name,
                               checkpoint_last=False, **kwargs)
    if not distributed.is_main():  # every process trained (DDP); the main process saves
        return distributed.others_read(stage, name)
    model = model if train_cfg.full else model.merge_and_unload()
    with artifacts.atomic_path(stage / "model") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    shutil.rmtree(stage / "checkpoints", ignore_errors=True)
    manifest = artifacts.write_manifest(stage, name, cfg.to_dict(), examples=len(rows), train_seconds=round(seconds, 2),
                                        final_loss=round(float(loss), 5), method=cfg.distill.method,
                                        targets=cfg.distill.targets if name == "distilled" else "reference answers",
                                        teacher=None if name != "distilled" else
                                        "online, across tokenizers (ULD)" if s_manifest.get("cross_tokenizer")
                                        else f"served ({remote.url}), on-policy by its log-probs" if remote
                                        else "online" if cfg.distill.online
                                        else "cached top-k; on-policy batches by the teacher in memory"
                                        if cfg.distill.alpha > 0 and cfg.distill.on_policy > 0
                                        else "cached top-k" if cfg.distill.alpha > 0 else "sequence-level only",
                                        aligned_positions=stats.get("aligned"), target_tokens=stats.get("targets"),
                                        teacher_positions=stats.get("teacher_positions"),
                                        teacher_misses=stats.get("teacher_misses"),
                                        on_policy=cfg.distill.on_policy if name == "distilled" else None,
                                        on_policy_batches=stats.get("on_policy_batches"), batches=stats.get("batches"))
    return distributed.main_wrote(manifest)


def cross_tokenizer_training(rows: list[dict], cfg: RunConfig, student_tok, teacher, stats: dict) -> dict:
    """fit() arguments for a student with another tokenizer: ULD against the online teacher."""
    from .trainer import CrossTokenizerTrainer, cross_collate, cross_examples

    t_tok = models.load_tokenizer(cfg.distill.teacher)
    sys_prompt, template = cfg.data.system_prompt, cfg.data.template
    examples = cross_examples(rows, student_tok, t_tok, {r["sample_id"]: r["prompt_ids"] for r in rows},
                              {r["sample_id"]: prompt_ids(student_tok, r, sys_prompt, template) for r in rows})
    return dict(trainer_cls=CrossTokenizerTrainer, examples=examples, kd=cfg.distill, teacher=teacher, counts=stats,
                collate_fn=lambda b, _packed: cross_collate(b, student_tok.pad_token_id, t_tok.pad_token_id))


def run_compare(run_dir: Path, cfg: RunConfig, log=print) -> dict:
    from .decide import write_report

    run_dir = Path(run_dir)
    tcfg, scfg = teacher_config(cfg), student_config(cfg)
    session = Session(tcfg, log, saved=cfg)

    def once(name: str, done: bool, fn):
        return step(name, done, fn, log)

    run_stages(run_dir, tcfg, session, ["prepare"])
    # the student first: its size and vocabulary checks fail before any teacher generation is spent
    once("student", artifacts.is_done(run_dir / "student"),  # under accelerate launch: the main process
         lambda: distributed.on_main(lambda: build_student(run_dir, scfg, *session.base())))
    run_stages(run_dir, tcfg, session, ["generate", "score", "select"])
    once("evaluate-teacher", (run_dir / "evaluate" / "teacher.json").exists(),
         lambda: evaluate.evaluate_model(run_dir, tcfg, "teacher", *session.base(), log=log))
    served = choose_backend(tcfg.backend.kind) != "local"
    remote = session.sampler() if served and cfg.distill.on_policy > 0 and not cfg.distill.online else None
    needs_teacher = remote is None and scfg.distill.alpha > 0 and (cfg.distill.online or cfg.distill.on_policy > 0)
    teacher = session.base()[0] if needs_teacher else None  # on-policy batches are scored by it, live
    if teacher is None:
        session.release()  # the cached top-k rows (and a served teacher) stand in for the teacher from here on
    tok = models.load_tokenizer(str(run_dir / "student" / "model"))  # the student's own tokenizer
    once("alone", artifacts.is_done(run_dir / "alone"),
         lambda: train_student(run_dir, scfg, "alone", reference_rows(run_dir, tok, cfg.data.system_prompt, cfg.data.template), log=log))
    once("distilled", artifacts.is_done(run_dir / "distilled"),
         lambda: train_student(run_dir, scfg, "distilled",
                               artifacts.read_jsonl(run_dir / "select" / "selected.jsonl"), teacher, log=log,
                               remote=remote))
    teacher = None
    session.release()
    for name in ("student", "alone", "distilled"):
        if not (run_dir / "evaluate" / f"{name}.json").exists():
            path = str(run_dir / name / "model")
            pair = models.load_model(path, cfg.model.dtype, cfg.model.device), models.load_tokenizer(path)
            prefix = ANSWER if name == "distilled" and cfg.distill.targets == "step_by_step" else ""
            once(f"evaluate-{name}", False,
                 lambda: evaluate.evaluate_model(run_dir, scfg, name, *pair, log=log, prefix=prefix))
    return distributed.on_main(lambda: write_report(run_dir, cfg))  # None on the other processes
