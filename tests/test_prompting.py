"""Prompt templates: chat wraps a prompt in the model's chat template, raw keeps the text exactly as given."""
import json

import pytest

from depthtune.backends.local import LocalSampler
from depthtune.config import DataConfig
from depthtune.data import load_prompt_file
from depthtune.errors import DepthtuneError
from depthtune.prompting import prompt_ids, resolve_template

COMPLETION_STYLE = {"context": "\n\nQ: What is 98 plus 45?\n\nA:", "completion": " 143"}


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from depthtune.models import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture
def completion_item(tmp_path):
    path = tmp_path / "completion.jsonl"
    path.write_text(json.dumps(COMPLETION_STYLE) + "\n")
    [item] = load_prompt_file(str(path), DataConfig(path=str(path), prompt_field="context", answer_field="completion"))
    return item


def test_raw_is_the_text_exactly_as_given_tokenised_as_plain_text(tok, completion_item):
    assert completion_item["prompt"] == COMPLETION_STYLE["context"]  # loading keeps the leading newlines
    assert prompt_ids(tok, completion_item, template="raw") == tok(COMPLETION_STYLE["context"])["input_ids"]
    assert tok.decode(prompt_ids(tok, completion_item, template="raw")) == COMPLETION_STYLE["context"]


def test_chat_wraps_the_prompt_and_auto_picks_chat_where_the_model_has_a_template(tok, completion_item):
    chat = prompt_ids(tok, completion_item, template="chat")
    expected = tok.apply_chat_template([{"role": "user", "content": COMPLETION_STYLE["context"]}],
                                       add_generation_prompt=True, tokenize=True, return_dict=False)
    assert chat == list(expected) and len(chat) > len(prompt_ids(tok, completion_item, template="raw"))
    assert prompt_ids(tok, completion_item) == chat and resolve_template(tok) == "chat"


def test_without_a_chat_template_auto_is_raw_and_chat_is_refused(tok, completion_item, monkeypatch):
    monkeypatch.setattr(tok, "chat_template", None)
    assert resolve_template(tok, "auto") == "raw"
    assert prompt_ids(tok, completion_item) == tok(COMPLETION_STYLE["context"])["input_ids"]
    with pytest.raises(DepthtuneError, match="no chat template; use --template raw"):
        prompt_ids(tok, completion_item, template="chat")


def test_raw_chat_rows_join_their_messages_and_the_system_prompt(tok):
    item = {"messages": [{"role": "user", "content": "Q: 2+2?"}, {"role": "assistant", "content": "4"},
                         {"role": "user", "content": "Q: 3+3?\nA:"}]}
    joined = "Answer briefly.\nQ: 2+2?\n4\nQ: 3+3?\nA:"
    assert prompt_ids(tok, item, "Answer briefly.", "raw") == tok(joined)["input_ids"]


def test_the_local_sampler_samples_from_the_template_it_was_given(tiny_model_dir, tok, completion_item):
    from depthtune.models import load_model

    model = load_model(str(tiny_model_dir), device="cpu")
    rows = {}
    for template in ("raw", "chat"):
        sampler = LocalSampler(model, tok, template)
        rows[template], _, _ = sampler.sample_chunk([completion_item], k=1, temperature=0, top_p=1.0, max_new_tokens=2,
                                                    seed=0, system_prompt=None)
        assert sampler.template == template
    assert rows["raw"][0]["prompt_ids"] == tok(COMPLETION_STYLE["context"])["input_ids"]
    assert rows["chat"][0]["prompt_ids"] == prompt_ids(tok, completion_item, template="chat")
    assert LocalSampler(model, tok).template == "chat"  # auto, resolved once
