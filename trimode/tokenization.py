"""Byte-level BPE tokenizer for trimode models.

The tokenizer is trained from scratch with the `tokenizers` library and wrapped
as a `transformers` fast tokenizer so that `save_pretrained` /
`AutoTokenizer.from_pretrained` work offline with no custom code.

Design choices:

* Byte-level BPE (ByteLevel pre-tokenizer + decoder, no normalizer, no prefix
  space), with every digit its own pre-token (no merges across digits): every string, including tabs, CRLF and arbitrary unicode, encodes and
  decodes back to exactly itself. All 256 byte symbols are seeded into the
  vocabulary so unseen bytes never become unknown tokens.
* The seven special tokens occupy ids 0..6 in a fixed order (see
  `SPECIAL_TOKENS`), so model code may rely on e.g. `MASK_ID == 3` being the
  diffusion mask id regardless of vocab size.
* No post-processor: encoding never inserts BOS/EOS on its own. Training and
  generation code add them explicitly, which keeps `encode(a) + encode(b)`
  predictable and round-trips exact.
* Special-token strings appearing in *input text* are matched as special
  tokens (the `tokenizers` default). When encoding untrusted raw text such as
  corpus files, pass `split_special_tokens=True` to encode them as plain bytes.
* Chat template (instruct model), no separators between turns:
  ``<|system|>{content}``, ``<|user|>{content}``,
  ``<|assistant|>{content}<|eos|>``; ``add_generation_prompt`` appends
  ``<|assistant|>``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:  # transformers is slow to import; only needed when training/wrapping
    from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
MASK_TOKEN = "<|mask|>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
SYSTEM_TOKEN = "<|system|>"

# Order defines the ids: SPECIAL_TOKENS[i] has id i.
SPECIAL_TOKENS: tuple[str, ...] = (
    PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, MASK_TOKEN, USER_TOKEN, ASSISTANT_TOKEN, SYSTEM_TOKEN,
)
PAD_ID, BOS_ID, EOS_ID, MASK_ID, USER_ID, ASSISTANT_ID, SYSTEM_ID = range(len(SPECIAL_TOKENS))

DEFAULT_VOCAB_SIZE = 4096
# Specials + the 256 byte symbols must fit, with some room left for merges.
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256 + 1

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}" + SYSTEM_TOKEN + "{{ message['content'] }}"
    "{%- elif message['role'] == 'user' -%}" + USER_TOKEN + "{{ message['content'] }}"
    "{%- elif message['role'] == 'assistant' -%}"
    + ASSISTANT_TOKEN + "{{ message['content'] }}" + EOS_TOKEN +
    "{%- else -%}{{ raise_exception('unknown chat role ' ~ message['role']"
    " ~ '; allowed: system, user, assistant') }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}" + ASSISTANT_TOKEN + "{%- endif -%}"
)


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    min_frequency: int = 2,
    model_max_length: int | None = None,
    show_progress: bool = False,
) -> "PreTrainedTokenizerFast":
    """Train a byte-level BPE tokenizer on `texts` (consumed lazily, once).

    Returns a `transformers` fast tokenizer with the trimode special tokens at
    ids 0..6 and the instruct chat template installed.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: need at least {MIN_VOCAB_SIZE} "
            f"({len(SPECIAL_TOKENS)} special tokens + 256 byte symbols + 1 merge)"
        )
    if min_frequency < 1:
        raise ValueError(f"min_frequency={min_frequency} must be >= 1")

    tok = Tokenizer(models.BPE())
    # Digits are split one by one before the byte-level split: merged digit runs ('85', '864')
    # would make the same number tokenize differently in different places, which makes
    # arithmetic much harder to learn. add_prefix_space=False: a leading space would break
    # exact round-trips.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),  # added first, in order -> ids 0..6
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer=trainer)

    for i, s in enumerate(SPECIAL_TOKENS):  # guard against library behaviour changes
        if tok.token_to_id(s) != i:
            raise RuntimeError(f"special token {s!r} got id {tok.token_to_id(s)}, expected {i}")

    kwargs = {} if model_max_length is None else {"model_max_length": model_max_length}
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        mask_token=MASK_TOKEN,
        additional_special_tokens=[USER_TOKEN, ASSISTANT_TOKEN, SYSTEM_TOKEN],
        # Cleanup would delete spaces before punctuation and break round-trips.
        clean_up_tokenization_spaces=False,
        **kwargs,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def special_token_ids(tokenizer) -> dict[str, int]:
    """Return {"pad", "bos", "eos", "mask"} -> id for `tokenizer`.

    Raises ValueError if any of them is missing, since every trimode mode
    needs all four (mask for diffusion, pad/eos for batching and stopping).
    """
    ids = {
        "pad": tokenizer.pad_token_id,
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "mask": tokenizer.mask_token_id,
    }
    missing = [k for k, v in ids.items() if v is None]
    if missing:
        raise ValueError(f"tokenizer has no {', '.join(missing)} token id(s); all of pad, bos, eos, mask are required")
    return ids


def chat_prompt_ids(tokenizer, user_text: str) -> list[int]:
    """Token ids of one user turn rendered by the tokenizer's own chat template, ready for the
    assistant's answer (``add_generation_prompt``); a tokenizer without a template is an error."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template; encode the prompt as plain text instead")
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": user_text}], add_generation_prompt=True,
                                             tokenize=False)
    return tokenizer.encode(rendered, add_special_tokens=False)
