"""The verbalizer phase (--verbalize-steps): soft tokens from text, then real reads."""

from __future__ import annotations

import json

import pytest
import torch
from lit_fixtures import tiny_run_reads, tiny_train_config, write_tiny_data, write_tiny_model
from safetensors.torch import load_file

import latentqa.train.trainer as trainer
from latentqa.decoder.projector import mean_token_embeddings, token_norm
from latentqa.errors import LatentQAError
from latentqa.models import load_model
from latentqa.train.checkpoint import PROJECTOR_KEY
from latentqa.train.prepare import prepare_data
from latentqa.train.projector_fit import build_projector
from latentqa.train.verbalizer import TextVectorSource, verbalizing


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("verbalizer")
    return write_tiny_model(root / "model"), write_tiny_data(root / "data")


def config(workspace, out, **overrides):
    defaults = dict(
        steps=3,
        batch_size=4,
        lr=1e-2,
        warmup_steps=0,
        eval_every=0,
        save_every=1,
        device="cpu",
        projector="linear",
        read_pool="mean",
        read_layers=[1, 2],
        verbalize_steps=2,
    )
    return tiny_train_config(workspace, out, **{**defaults, **overrides})


def test_text_vectors_are_mean_embeddings_scaled_to_token_norm(workspace, tmp_path):
    cfg = config(workspace, tmp_path / "unused")
    model, tokenizer = load_model(cfg.target, device="cpu", dtype="float32")
    data = prepare_data(cfg, tokenizer)
    embeddings = model.get_input_embeddings()
    source = TextVectorSource(embeddings, tokenizer, data.fit_texts, n_slots=3)
    dialogs = sorted(data.fit_texts)
    vectors = source.get(dialogs)
    assert all(v.shape == (3, embeddings.weight.shape[1]) for v in vectors)
    assert all(torch.equal(v[0], v[2]) for v in vectors)  # one copy per slot
    means = mean_token_embeddings(embeddings, tokenizer, [data.fit_texts[d] for d in dialogs])
    firsts = torch.stack([v[0] for v in vectors])
    # One factor for all: each vector points where its text's mean embedding does ...
    ratios = firsts.norm(dim=-1) / means.norm(dim=-1)
    torch.testing.assert_close(ratios, ratios[:1].expand_as(ratios))
    torch.testing.assert_close(torch.cosine_similarity(firsts, means), torch.ones(len(dialogs)))
    # ... and the median vector is as long as a token embedding, as a fitted projector's.
    assert firsts.norm(dim=-1).median().item() == pytest.approx(token_norm(embeddings), rel=1e-5)
    with pytest.raises(LatentQAError, match="no text to verbalize"):
        source.get([max(dialogs) + 1000])


def _projector(path) -> dict[str, torch.Tensor]:
    tensors = load_file(path / "adapter.safetensors")
    return {k[len(PROJECTOR_KEY) :]: v for k, v in tensors.items() if k.startswith(PROJECTOR_KEY)}


def _lora_b(path) -> list[torch.Tensor]:
    return [v for k, v in load_file(path / "adapter.safetensors").items() if "lora_B" in k]


def test_verbalize_steps_train_the_lora_on_text_then_the_projector_on_reads(workspace, tmp_path):
    out = tmp_path / "run"
    cfg = config(workspace, out, keep_checkpoints=3)
    trainer.train(cfg, progress=False)
    steps = [out / "checkpoints" / f"step-{s:07d}" for s in (1, 2, 3)]
    # The fitted start, computed as the run computes it (same reads, same ridge).
    decoder, tokenizer, data, source = tiny_run_reads(cfg)
    start = build_projector(cfg, decoder, tokenizer, source, data, n_slots=2).state_dict()
    for step in steps[:2]:  # the verbalizer phase: the projector is not used, nor changed
        saved = _projector(step)
        assert all(torch.equal(saved[k], start[k]) for k in start)
    assert any(v.any() for v in _lora_b(steps[0]))  # while the LoRA learns
    assert not torch.equal(_projector(steps[2])["weight"], start["weight"])  # reads from step 3
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    phases = [r.get("phase") for r in records if r.get("kind") == "train"]
    assert phases == ["verbalize", "verbalize", None]


@pytest.mark.parametrize("step", range(5))
def test_verbalizing_covers_exactly_the_first_steps(step):
    assert verbalizing(step, 2) == (step < 2)
    assert not verbalizing(step, 0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"projector": "none", "read_pool": "none"}, "add --projector linear or mlp"),
        ({"verbalize_steps": 3}, "set --verbalize-steps below --steps"),
        ({"projector_warmup_steps": 1}, "use one of them"),
        ({"verbalize_steps": -1}, "verbalize_steps"),
    ],
)
def test_verbalize_options_that_cannot_work_are_refused(workspace, tmp_path, overrides, message):
    with pytest.raises(LatentQAError, match=message):
        config(workspace, tmp_path / "out", **overrides)
