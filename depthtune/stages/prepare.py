"""Stage 0, prepare: the training and held-out prompt lists.

Reads  --data / --eval-data, or the built-in suites
Writes <run>/prompts/{train,eval}.jsonl (+ manifest.json)

Checked here, before any model is loaded: every prompt fits the model's context window with room for
its answer, and held-out prompts that also appear among the training prompts are counted (a warning,
and a line in the report: their figures measure memory, not generalisation).
"""
from __future__ import annotations

from pathlib import Path

from .. import artifacts, distributed
from ..checking import normalise
from ..config import RunConfig
from ..data import load_prompts
from ..errors import DepthtuneError
from ..prompting import prompt_ids


def context_window(name: str | None) -> int | None:
    """The model's context length from its config (a GGUF file's header, a directory's config.json)."""
    from transformers import AutoConfig

    from ..models import loadable

    source, extra = loadable(name)
    try:
        config = AutoConfig.from_pretrained(source, **extra)
    except (OSError, ValueError):  # the model's own loader will say what is wrong
        return None
    return getattr(config, "max_position_embeddings", None)


def check_lengths(items: list[dict], tok, cfg: RunConfig, window: int | None, what: str, answer_tokens: int) -> None:
    """A prompt that leaves no room for its answer in the context window is refused in one line."""
    if not window:
        return
    for it in items:
        n = len(prompt_ids(tok, it, cfg.data.system_prompt, cfg.data.template))
        if n + answer_tokens > window:
            raise DepthtuneError(f"{what} prompt {it['id']} is {n:,} tokens; with up to {answer_tokens} answer "
                                 f"tokens it does not fit the model's context window of {window:,}; shorten or "
                                 f"remove it (or lower max_new_tokens)")


def leaked(train: list[dict], held: list[dict]) -> list[str]:
    """Held-out prompt ids whose text (normalised) is also a training prompt's."""
    def text(it: dict) -> str:
        if it.get("messages"):
            return normalise(" ".join(str(m.get("content")) for m in it["messages"]))
        return normalise(it["prompt"])
    seen = {text(it) for it in train}
    return [it["id"] for it in held if text(it) in seen]


def run(run_dir: Path, cfg: RunConfig, tok=None, log=print) -> dict:
    """Write the train / held-out prompt lists (once) and the resolved config. `tok` (the model's
    tokenizer) turns on the context-window check."""
    run_dir = Path(run_dir)
    stage_dir = run_dir / "prompts"
    if not distributed.is_main():  # under accelerate launch the main process writes, the others read
        return distributed.others_read(stage_dir, "prompts")
    if artifacts.is_done(stage_dir):
        manifest = artifacts.read_json(artifacts.manifest_path(stage_dir))
    else:
        train_items, held = load_prompts(cfg.data)  # fails before anything is written
        if tok is not None:
            window = context_window(cfg.model.name)
            check_lengths(train_items, tok, cfg, window, "training", cfg.generate.max_new_tokens)
            check_lengths(held, tok, cfg, window, "held-out", cfg.evaluate.max_new_tokens)
        overlap = leaked(train_items, held) if cfg.data.path else []
        if overlap:
            log(f"warning: {len(overlap)} of {len(held)} held-out prompts are also training prompts (e.g. "
                f"{', '.join(overlap[:3])}); their held-out figures measure memory, not generalisation")
        artifacts.write_jsonl(stage_dir / "train.jsonl", train_items)
        artifacts.write_jsonl(stage_dir / "eval.jsonl", held)
        manifest = artifacts.write_manifest(stage_dir, "prompts", cfg.to_dict(), train=len(train_items),
                                            eval=len(held), leaked=overlap,
                                            with_answers=sum(p["answer"] is not None for p in train_items))
    return distributed.main_wrote(manifest)
