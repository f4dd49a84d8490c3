"""Chat templates and loss masks.

A prompt (a conversation ending in a user turn) is rendered with the tokenizer's own chat
template when it has one, else with DEFAULT_TEMPLATE (a plain "User:/Assistant:" layout, so
base models such as GPT-2 work too). The response is tokenized on its own and followed by EOS,
so the boundary between prompt and response tokens is exact: SFT puts loss only on the response
(and its EOS), and generation starts exactly where training's responses started.
"""

from __future__ import annotations

from typing import Any

from coachlm.data.schema import Prompt

IGNORE_INDEX = -100  # the label value that torch's cross-entropy skips

# Used when a tokenizer has no chat template of its own. Each past assistant turn ends with EOS,
# as the responses we train on do.
DEFAULT_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}User: {{ m['content'] }}\n\n"
    "{% else %}Assistant: {{ m['content'] }}{{ eos_token }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def _messages(prompt: Prompt) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in prompt]


def render_prompt(tokenizer: Any, prompt: Prompt) -> str:
    """The prompt as text, ending where the assistant's response begins."""
    template = getattr(tokenizer, "chat_template", None) or DEFAULT_TEMPLATE
    return tokenizer.apply_chat_template(
        _messages(prompt), chat_template=template, tokenize=False, add_generation_prompt=True
    )


def encode_prompt(tokenizer: Any, prompt: Prompt) -> list[int]:
    """Token ids of the rendered prompt (special tokens come from the template itself)."""
    return list(tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"])


def encode_response(tokenizer: Any, text: str, add_eos: bool = True) -> list[int]:
    """Token ids of a response, followed by EOS: the model learns to stop."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if add_eos:
        ids.append(tokenizer.eos_token_id)
    return ids


def encode_example(tokenizer: Any, prompt: Prompt, response: str,
                   max_length: int | None = None) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for SFT: labels are IGNORE_INDEX on prompt tokens.

    When too long, the prompt is cut from the left (the instruction is at its end) and then the
    response from the right, so that at least one response token keeps a label.
    """
    p = encode_prompt(tokenizer, prompt)
    r = encode_response(tokenizer, response)
    if max_length is not None and len(p) + len(r) > max_length:
        keep_p = max(max_length - len(r), max_length // 2)
        p = p[-keep_p:]
        r = r[: max_length - len(p)]
    return p + r, [IGNORE_INDEX] * len(p) + r
