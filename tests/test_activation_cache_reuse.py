"""A new activation cache takes the reads it shares with earlier caches of its folder.

Adding data to a training set changes the cache's key (it covers every dialog), so
without reuse every read would be computed again; with it only the new dialogs are."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tiny import make_pair

from latentqa.capture import pad_token_id
from latentqa.chat import encode_dialog
from latentqa.train.activations import READ_KEY, ActivationSource

TOPICS = ["tea", "cats", "rain", "bikes", "maps", "jazz", "salt"]


def dialogs(tokenizer, topics):
    return [
        encode_dialog(
            tokenizer,
            [
                {"role": "system", "content": f"Talk about {t}."},
                {"role": "user", "content": f"Tell me something about {t} today."},
            ],
            1,
        )
        for t in topics
    ]


def source(model, tokenizer, topics, layers=(1, 2)):
    return ActivationSource(
        model, dialogs(tokenizer, topics), pad_token_id(tokenizer), list(layers), 16, pool="mean"
    )


def computed_indices(monkeypatch) -> list[int]:
    seen: list[int] = []
    original = ActivationSource._read_rows

    def spy(self, rows):
        if self._cache is None:  # the target runs (a loaded cache answers by itself)
            seen.extend(rows)
        return original(self, rows)

    monkeypatch.setattr(ActivationSource, "_read_rows", spy)
    return seen


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_only_new_dialogs_are_read_and_reused_reads_equal_fresh_ones(arch, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model, tokenizer = make_pair(arch)
    model.eval()
    first = source(model, tokenizer, TOPICS[:5])
    key = first.read_key("tiny")
    first.load_or_build_cache(tmp_path / "a.safetensors", progress=False, read_key=key)
    with safe_open(str(tmp_path / "a.safetensors"), framework="pt") as cache:
        assert cache.metadata()[READ_KEY] == key

    seen = computed_indices(monkeypatch)
    # Three old dialogs (in another order) and two new ones.
    topics = ["maps", "tea", "jazz", "rain", "salt"]
    second = source(model, tokenizer, topics)
    assert second.read_key("tiny") == key
    assert second.fingerprint("tiny") != first.fingerprint("tiny")
    second.load_or_build_cache(tmp_path / "b.safetensors", progress=False, read_key=key)
    assert sorted(seen) == [2, 4]  # jazz and salt
    fresh = source(model, tokenizer, topics).compute(range(len(topics)))
    for got, want in zip(second.get(range(len(topics))), fresh, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_other_read_options_or_foreign_files_are_not_reused(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model, tokenizer = make_pair("llama")
    model.eval()
    first = source(model, tokenizer, TOPICS[:3], layers=(1,))
    key = first.read_key("t")
    first.load_or_build_cache(tmp_path / "a.safetensors", progress=False, read_key=key)
    save_file({"0": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    seen = computed_indices(monkeypatch)
    other = source(model, tokenizer, TOPICS[:3], layers=(2,))  # another read layer
    assert other.read_key("t") != key
    other.load_or_build_cache(
        tmp_path / "b.safetensors", progress=False, read_key=other.read_key("t")
    )
    assert sorted(seen) == [0, 1, 2]
    # Without a read key (the old form) nothing is reused and no key is written.
    seen.clear()
    plain = source(model, tokenizer, TOPICS[:3], layers=(1,))
    plain.load_or_build_cache(tmp_path / "c.safetensors", progress=False)
    assert sorted(seen) == [0, 1, 2]
    with safe_open(str(tmp_path / "c.safetensors"), framework="pt") as cache:
        assert READ_KEY not in (cache.metadata() or {})
