"""The built-in world's tokenizer: byte-level BPE trained from scratch, with a chat template.

Byte-level BPE (Radford et al., 2019) encodes any text without an unknown token. Digits are split
one per token, as Llama does (Touvron et al., 2023): a tiny model learns arithmetic far more easily
when "128" is always "1","2","8" than when the merges chunk numbers unpredictably
(Nogueira et al., 2021, "Investigating the limitations of transformers with simple arithmetic").

There is no post-processor: the chat template (and the pretraining packer) place `<bos>`/`<eos>`
themselves, so `tokenizer(text)` returns exactly the tokens of `text`. A prompt renders as

    <bos><|user|>\n{content}\n<|assistant|>\n

and a response is its own tokens followed by `<eos>` (see `coachlm.data.chat`). The prompt ends
in a newline, which the byte-level pre-tokenizer always splits off, so tokenizing a response alone
and appending it to the prompt gives the same tokens as tokenizing the whole text at once.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
# Order fixes the ids: <pad> is 0, <bos> 1, <eos> 2, then the role markers.
SPECIAL_TOKENS = (PAD, BOS, EOS, *ROLE_TOKENS)

# Each past assistant turn ends with <eos>, exactly as the responses we train on do.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}<|assistant|>\n{{ m['content'] }}{{ eos_token }}"
    "{% else %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with `vocab_size` entries (specials included) on `texts`."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} "
                         f"(256 bytes plus {len(SPECIAL_TOKENS)} special tokens), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap_tokenizer(tok)


def wrap_tokenizer(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """A transformers tokenizer around a `tokenizers.Tokenizer` holding SPECIAL_TOKENS."""
    missing = [t for t in SPECIAL_TOKENS if tok.token_to_id(t) is None]
    if missing:
        raise ValueError(f"tokenizer lacks the special tokens {missing}")
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD, bos_token=BOS, eos_token=EOS,
        extra_special_tokens=list(ROLE_TOKENS),
        clean_up_tokenization_spaces=False,
    )
    out.chat_template = CHAT_TEMPLATE
    return out
