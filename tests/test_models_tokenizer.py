"""The world tokenizer: special ids, chat template, clean prompt/response boundary, round trip."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from coachlm.data.chat import IGNORE_INDEX, encode_example, encode_prompt, encode_response, render_prompt
from coachlm.data.schema import as_prompt
from coachlm.models.tokenizer import SPECIAL_TOKENS, train_tokenizer
from models_fixtures import texts, tokenizer


def test_special_token_ids():
    tok = tokenizer()
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.pad_token_id != tok.eos_token_id
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert len(tok) == 300


def test_vocab_size_and_any_text_encodes():
    tok = train_tokenizer(texts(), vocab_size=280)
    assert len(tok) == 280
    text = "Zürich 東京 🙂 tab\there"  # none of it in the training texts: byte fallback
    assert tok.decode(tok(text)["input_ids"]) == text


def test_digits_are_single_tokens():
    tok = tokenizer()
    ids = tok("is 2024", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids)[-4:] == ["2", "0", "2", "4"]


def test_no_special_tokens_added_by_default():
    tok = tokenizer()
    assert tok("the cat")["input_ids"] == tok("the cat", add_special_tokens=False)["input_ids"]


def test_chat_template_renders_the_documented_layout():
    tok = tokenizer()
    assert render_prompt(tok, as_prompt("What is 2 plus 2?")) == (
        "<bos><|user|>\nWhat is 2 plus 2?\n<|assistant|>\n")
    convo = as_prompt([{"role": "system", "content": "Be brief."},
                       {"role": "user", "content": "Hi"},
                       {"role": "assistant", "content": "Hello."},
                       {"role": "user", "content": "Bye"}])
    assert render_prompt(tok, convo) == (
        "<bos><|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello.<eos>"
        "<|user|>\nBye\n<|assistant|>\n")


def test_prompt_ids_start_with_bos_and_end_after_assistant_marker():
    tok = tokenizer()
    ids = encode_prompt(tok, as_prompt("the cat"))
    assert ids[0] == tok.bos_token_id
    assert ids[1] == tok.convert_tokens_to_ids("<|user|>")
    assert ids[-2] == tok.convert_tokens_to_ids("<|assistant|>")
    assert tok.decode(ids[-1:]) == "\n"


@pytest.mark.parametrize("response", ["4", " the cat sat.", "Dear Bob,\nthe dog ran.", "\n\nsad", "  two"])
def test_response_tokenized_alone_concatenates_cleanly(response):
    tok = tokenizer()
    prompt = as_prompt("What is 2 plus 2?")
    whole = tok(render_prompt(tok, prompt) + response, add_special_tokens=False)["input_ids"]
    assert encode_prompt(tok, prompt) + encode_response(tok, response, add_eos=False) == whole


def test_encode_example_labels_only_the_response_and_eos():
    tok = tokenizer()
    prompt = as_prompt("What is 3 plus 3?")
    ids, labels = encode_example(tok, prompt, "3 plus 3 is 6.")
    n_prompt = len(encode_prompt(tok, prompt))
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    assert ids[-1] == tok.eos_token_id
    assert tok.decode(ids[n_prompt:], skip_special_tokens=True) == "3 plus 3 is 6."


def test_save_and_reload_keeps_template_and_specials(tmp_path):
    tok = tokenizer()
    tok.save_pretrained(str(tmp_path))
    again = AutoTokenizer.from_pretrained(str(tmp_path))
    assert again.chat_template == tok.chat_template
    assert (again.pad_token_id, again.bos_token_id, again.eos_token_id) == (0, 1, 2)
    assert set(again.all_special_tokens) == set(SPECIAL_TOKENS)
    prompt = as_prompt("the big dog")
    assert encode_prompt(again, prompt) == encode_prompt(tok, prompt)
    assert again.decode(encode_prompt(again, prompt), skip_special_tokens=True) == "\nthe big dog\n\n"


def test_too_small_vocab_is_refused():
    with pytest.raises(ValueError, match="at least"):
        train_tokenizer(["abc"], vocab_size=100)
