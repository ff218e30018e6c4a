import random

import pytest
from transformers import AutoTokenizer

from trimode.data.tasks import format_prompt, generate_tasks, sft_example, task_messages
from trimode.tokenization import (
    ASSISTANT_TOKEN,
    EOS_TOKEN,
    MIN_VOCAB_SIZE,
    SPECIAL_TOKENS,
    SYSTEM_TOKEN,
    USER_TOKEN,
    special_token_ids,
    train_tokenizer,
)

SAMPLES = [
    "",
    "def f(x):\n\treturn x + 1  # trailing spaces   \n",
    "class A:\r\n    pass\r\n\r\n",
    "  leading spaces and\ttabs\t\t\n\n\n",
    "héllo wörld — ünïcode ñ 你好，世界 こんにちは 🎉🐍 \u200b zero-width",
    "null\x00byte and control \x07\x1b[0m",
    "a" * 300,
    "x=1;y=2\nprint(f'{x!r:>10}')\n",
]


def _random_text(rng: random.Random) -> str:
    # mix of ASCII, Latin-1, CJK and astral-plane characters
    pools = [range(0x20, 0x7F), range(0xA0, 0x250), range(0x4E00, 0x4E80), range(0x1F300, 0x1F340), [9, 10, 13]]
    return "".join(chr(rng.choice(rng.choice(pools))) for _ in range(rng.randint(0, 80)))


def test_special_token_ids_fixed(small_tokenizer):
    tok = small_tokenizer
    assert len(tok) == 512
    for i, s in enumerate(SPECIAL_TOKENS):
        assert tok.convert_tokens_to_ids(s) == i
    assert special_token_ids(tok) == {"pad": 0, "bos": 1, "eos": 2, "mask": 3}


def test_round_trip_exact(small_tokenizer):
    rng = random.Random(0)
    for text in SAMPLES + [_random_text(rng) for _ in range(200)]:
        ids = small_tokenizer.encode(text)
        assert small_tokenizer.decode(ids) == text


def test_no_automatic_special_tokens(small_tokenizer):
    ids = small_tokenizer.encode("print(1)")
    assert not set(ids) & set(range(len(SPECIAL_TOKENS)))


def test_special_strings_in_text(small_tokenizer):
    text = f"x = '{EOS_TOKEN}'"
    assert 2 in small_tokenizer.encode(text)  # matched as a special token by default
    raw = small_tokenizer.encode(text, split_special_tokens=True)
    assert 2 not in raw and small_tokenizer.decode(raw) == text


def test_save_and_load_offline(small_tokenizer, tmp_path):
    small_tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    rng = random.Random(1)
    for text in SAMPLES + [_random_text(rng) for _ in range(50)]:
        assert loaded.encode(text) == small_tokenizer.encode(text)
        assert loaded.decode(loaded.encode(text)) == text
    assert special_token_ids(loaded) == special_token_ids(small_tokenizer)
    msgs = [{"role": "user", "content": "hi"}]
    assert loaded.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == (
        small_tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    )


def test_chat_template(small_tokenizer):
    msgs = [
        {"role": "system", "content": "Be exact."},
        {"role": "user", "content": " Sort 3, 1\n"},
        {"role": "assistant", "content": "1, 3"},
        {"role": "user", "content": "again"},
    ]
    render = small_tokenizer.apply_chat_template
    assert render(msgs, tokenize=False) == (
        f"{SYSTEM_TOKEN}Be exact.{USER_TOKEN} Sort 3, 1\n{ASSISTANT_TOKEN}1, 3{EOS_TOKEN}{USER_TOKEN}again"
    )
    assert render(msgs, tokenize=False, add_generation_prompt=True).endswith(f"{USER_TOKEN}again{ASSISTANT_TOKEN}")
    with pytest.raises(Exception, match="unknown chat role"):
        render([{"role": "tool", "content": "x"}], tokenize=False)


def test_task_prompt_matches_chat_template(small_tokenizer):
    for task in generate_tasks("train", 12, seed=0):
        rendered = small_tokenizer.apply_chat_template(task_messages(task), tokenize=False, add_generation_prompt=True)
        assert rendered == format_prompt(task)
        # SFT pair + EOS tokenises exactly like the full rendered conversation
        prompt_ids, response_ids = sft_example(task, small_tokenizer)
        full = small_tokenizer.apply_chat_template(task_messages(task, with_answer=True), tokenize=False)
        assert prompt_ids + response_ids + [2] == small_tokenizer.encode(full)


def test_vocab_too_small():
    with pytest.raises(ValueError, match="vocab_size=100"):
        train_tokenizer(["abc"], vocab_size=100)
    assert MIN_VOCAB_SIZE > len(SPECIAL_TOKENS) + 256
