"""How a prompt item becomes the token ids a model reads: its chat template, or the raw text.

One place for it, so generation, scoring, training and evaluation all see the same prompt.
"""
from __future__ import annotations


def prompt_ids(tok, item: dict, system_prompt: str | None = None) -> list[int]:
    """Token ids of a prompt: the chat template with the generation prompt, else the raw text."""
    messages = item.get("messages") or [{"role": "user", "content": item["prompt"]}]
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}] + messages
    if tok.chat_template:
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    text = "\n".join(m["content"] for m in messages)
    return tok(text, add_special_tokens=True)["input_ids"]


def with_prefix(item: dict, prefix: str) -> dict:
    """The same prompt item with a task prefix on its (last user) message."""
    if item.get("messages"):
        msgs = [dict(m) for m in item["messages"]]
        msgs[-1]["content"] = prefix + msgs[-1]["content"]
        return {**item, "messages": msgs}
    return {**item, "prompt": prefix + item["prompt"]}
