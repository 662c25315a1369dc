"""Reply generation for stimulus_completion: make_generate on a tiny model, and the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny import make_llama, make_tokenizer

from latentqa.data.replies import CompletionCache, complete_dialogs, dialog_key, make_generate
from latentqa.errors import LatentQAError

DIALOGS = [
    [{"role": "user", "content": "Hello there"}],
    [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "Hi"},
    ],
    [{"role": "user", "content": "What is the capital of France? Please answer in rhyme."}],
    [
        {"role": "user", "content": "Be cheerful."},
        {"role": "assistant", "content": "Sure!"},
        {"role": "user", "content": "Describe the tone."},
    ],
]


@pytest.fixture(scope="module")
def pair():
    tokenizer = make_tokenizer()
    return make_llama(len(tokenizer), n_layers=2, tie=False, max_positions=256), tokenizer


def test_make_generate_batches_like_single_dialogs(pair) -> None:
    model, tokenizer = pair
    side = tokenizer.padding_side
    generate = make_generate(model, tokenizer, max_new_tokens=6, batch_size=3, progress=False)
    batched = generate(DIALOGS)
    single = [generate([dialog])[0] for dialog in DIALOGS]
    assert batched == single
    assert all(isinstance(reply, str) for reply in batched)
    assert any(batched)
    assert tokenizer.padding_side == side
    assert "max_new_tokens=6" in generate.generator_id


def test_complete_dialogs_shows_one_progress_bar_over_all_chunks(pair, monkeypatch) -> None:
    import tqdm.auto

    import latentqa.data.replies as replies

    bars: list = []
    real = tqdm.auto.tqdm

    def counting(*args, **kwargs):
        bars.append(real(*args, **kwargs))
        return bars[-1]

    monkeypatch.setattr(tqdm.auto, "tqdm", counting)
    monkeypatch.setattr(replies, "CHUNK_SIZE", 3)  # two chunks of the four dialogs
    model, tokenizer = pair
    generate = make_generate(model, tokenizer, max_new_tokens=3, batch_size=2)
    got, generated = complete_dialogs(DIALOGS, generate, generate.generator_id)
    assert generated == 4 and len(got) == 4
    assert [(bar.total, bar.n) for bar in bars] == [(4, 4)]
    generate(DIALOGS[:1])  # called alone, it draws its own bar
    assert [(bar.total, bar.n) for bar in bars] == [(4, 4), (1, 1)]


def test_make_generate_rejects_bad_settings(pair) -> None:
    model, tokenizer = pair
    with pytest.raises(LatentQAError):
        make_generate(model, tokenizer, max_new_tokens=0)


def test_complete_dialogs_uses_and_fills_the_cache(tmp_path: Path) -> None:
    calls: list[int] = []

    def generate(dialogs: list[list[dict[str, str]]]) -> list[str]:
        calls.append(len(dialogs))
        return [f"reply {len(d)}" for d in dialogs]

    cache = tmp_path / "cache.jsonl"
    dialogs = [DIALOGS[0], DIALOGS[1], DIALOGS[0]]
    replies, generated = complete_dialogs(dialogs, generate, "m1", cache)
    assert replies == ["reply 1", "reply 2", "reply 1"]
    assert generated == 2 and calls == [2]
    replies, generated = complete_dialogs(dialogs, generate, "m1", cache)
    assert generated == 0 and calls == [2]
    # A different generator id does not reuse the other model's replies.
    _, generated = complete_dialogs(dialogs[:1], generate, "m2", cache)
    assert generated == 1
    lines = cache.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["reply"] for line in lines)


def test_cache_skips_a_cut_line(tmp_path: Path) -> None:
    path = tmp_path / "cache.jsonl"
    key = dialog_key(DIALOGS[0], "m")
    path.write_text(json.dumps({"key": key, "reply": "ok"}) + '\n{"key": "x", "rep')
    cache = CompletionCache(path)
    assert len(cache) == 1 and cache.get(key) == "ok"


def test_complete_dialogs_checks_the_generator(tmp_path: Path) -> None:
    with pytest.raises(LatentQAError):
        complete_dialogs(DIALOGS, lambda dialogs: ["x"], "m", None)
    with pytest.raises(LatentQAError):
        complete_dialogs(DIALOGS, lambda dialogs: [1] * len(dialogs), "m", None)
