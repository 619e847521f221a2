"""How a prompt item becomes the token ids a model reads: its chat template, or the raw text.

One place for it, so generation, scoring, training and evaluation all see the same prompt.

Templates (data.template, --template):
  chat  the model's chat template with the generation prompt (an instruct model's own format)
  raw   the prompt text exactly as given, tokenised as plain text: tok(text) ids, with whatever
        special tokens the tokenizer adds to any text by default (a Llama BOS; SmolLM2 adds none).
        For completion-style data such as "Q: What is 98 plus 45?\\n\\nA:".
  auto  chat where the tokenizer has a chat template, else raw
"""
from __future__ import annotations

from .errors import DepthtuneError

TEMPLATES = ("auto", "chat", "raw")


def resolve_template(tok, template: str = "auto") -> str:
    """auto -> chat or raw for this tokenizer; chat on a model without a chat template is a one-line error."""
    if template not in TEMPLATES:
        raise DepthtuneError(f"unknown template '{template}'; use auto, chat or raw")
    if template == "auto":
        return "chat" if tok.chat_template else "raw"
    if template == "chat" and not tok.chat_template:
        raise DepthtuneError("--template chat: this model's tokenizer has no chat template; use --template raw "
                             "(the prompt text as given)")
    return template


def raw_text(item: dict, system_prompt: str | None = None) -> str:
    """The prompt as plain text: the prompt field untouched; chat rows' messages (and a system prompt)
    joined by newlines, since raw text has no roles."""
    if not item.get("messages"):
        return f"{system_prompt}\n{item['prompt']}" if system_prompt else item["prompt"]
    contents = [m["content"] for m in item["messages"]]
    if system_prompt and item["messages"][0]["role"] != "system":
        contents = [system_prompt] + contents
    return "\n".join(contents)


def prompt_ids(tok, item: dict, system_prompt: str | None = None, template: str = "auto") -> list[int]:
    """Token ids of a prompt under `template` (auto, chat or raw)."""
    if resolve_template(tok, template) == "raw":
        return list(tok(raw_text(item, system_prompt))["input_ids"])
    messages = item.get("messages") or [{"role": "user", "content": item["prompt"]}]
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}] + messages
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def with_prefix(item: dict, prefix: str) -> dict:
    """The same prompt item with a task prefix on its (last user) message."""
    if item.get("messages"):
        msgs = [dict(m) for m in item["messages"]]
        msgs[-1]["content"] = prefix + msgs[-1]["content"]
        return {**item, "messages": msgs}
    return {**item, "prompt": prefix + item["prompt"]}
