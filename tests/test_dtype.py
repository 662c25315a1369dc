"""``--dtype auto`` and adapters saved in bfloat16.

``auto`` resolves to bfloat16 only where the device runs it at least as fast as float32
(the CPU measurement is replaced here by its answer: tests never time anything), and
the shipped adapters, saved in bfloat16, are upcast to float32 when peft loads them.
"""

from __future__ import annotations

import json

import pytest
import torch
from lit_fixtures import write_tiny_model
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file

import latentqa.devices as devices
from latentqa.cli import main
from latentqa.decoder.folder import DecoderSpec
from latentqa.decoder.loaded import load_decoder
from latentqa.errors import LatentQAError
from latentqa.models import auto_dtype, load_model, resolve_dtype


@pytest.fixture
def bf16_is(monkeypatch):
    """Set what the CPU measurement finds: ``bf16_is(True)`` (bfloat16 at least as fast)."""

    def answer(fast: bool) -> None:
        monkeypatch.setattr(devices, "cpu_bfloat16_is_fast", lambda: fast)

    return answer


@pytest.mark.parametrize("fast", [False, True])
def test_auto_follows_the_cpu_measurement(bf16_is, fast):
    bf16_is(fast)
    expected = torch.bfloat16 if fast else torch.float32
    assert resolve_dtype("auto", "cpu") == auto_dtype(torch.device("cpu")) == expected
    assert resolve_dtype(" AUTO ", torch.device("cpu")) == expected
    # Named dtypes never measure anything.
    assert resolve_dtype("float32", "cpu") == torch.float32
    assert resolve_dtype("bf16") == torch.bfloat16


@pytest.mark.parametrize("supported", [False, True])
def test_auto_on_cuda_follows_bf16_support(monkeypatch, supported):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    expected = torch.bfloat16 if supported else torch.float32
    assert auto_dtype(torch.device("cuda")) == expected
    assert auto_dtype(torch.device("meta")) == torch.float32


def test_the_measurement_runs_once_per_process():
    devices.cpu_bfloat16_is_fast.cache_clear()
    first = devices.cpu_bfloat16_is_fast()
    assert isinstance(first, bool) and devices.cpu_bfloat16_is_fast() == first
    info = devices.cpu_bfloat16_is_fast.cache_info()
    assert info.misses == 1 and info.hits == 1


def test_unknown_dtype_names_every_choice():
    with pytest.raises(LatentQAError, match="auto"):
        resolve_dtype("float8")


@pytest.mark.parametrize("fast", [False, True])
def test_models_load_in_the_dtype_auto_picks(tmp_path, bf16_is, fast, capsys):
    bf16_is(fast)
    folder = write_tiny_model(tmp_path / "model")
    model, _ = load_model(folder, device="cpu", dtype="auto")
    expected = torch.bfloat16 if fast else torch.float32
    assert {p.dtype for p in model.parameters()} == {expected}
    assert main(["layers", "--target", str(folder), "--device", "cpu", "--dtype", "auto"]) == 0
    name = str(expected).removeprefix("torch.")
    assert f"weights in {name} (chosen by --dtype auto) on cpu" in capsys.readouterr().out
    main(["layers", "--target", str(folder), "--device", "cpu", "--json"])
    assert json.loads(capsys.readouterr().out)["dtype"] == "float32"  # the default


def _bf16_decoder(root, model_folder):
    """A decoder folder whose adapter weights are saved in bfloat16, as the shipped ones."""
    model, _ = load_model(model_folder, device="cpu")
    torch.manual_seed(0)
    lora = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    folder = root / "decoder"
    get_peft_model(model, lora).save_pretrained(folder)
    weights = folder / "adapter_model.safetensors"
    saved = {name: value.bfloat16() for name, value in load_file(weights).items()}
    save_file(saved, weights)
    config = model.config
    spec = DecoderSpec(str(model_folder), [1], 0, "replace", 96, config.hidden_size, 4)
    spec.save(folder)
    return folder, saved


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_bf16_adapters_are_upcast_on_load(tmp_path, dtype):
    model_folder = write_tiny_model(tmp_path / "model")
    folder, saved = _bf16_decoder(tmp_path, model_folder)
    loaded = load_decoder(str(model_folder), folder, device="cpu", dtype=dtype)
    lora = {name: p for name, p in loaded.model.named_parameters() if "lora_" in name}
    assert lora and {p.dtype for p in lora.values()} == {torch.float32}
    # Every value is the saved bfloat16 one, exactly (bfloat16 -> float32 is exact).
    by_suffix = {name.split("base_model.model.", 1)[1]: v for name, v in saved.items()}
    for name, parameter in lora.items():
        key = name.split("base_model.model.", 1)[1].replace(".default", "")
        assert torch.equal(parameter.detach(), by_suffix[key].float())
    frozen = {p.dtype for n, p in loaded.model.named_parameters() if "lora_" not in n}
    assert frozen == {getattr(torch, dtype)}
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad():
        assert torch.isfinite(loaded.model(input_ids=ids).logits).all()
