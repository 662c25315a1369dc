"""The projector: its save / load round trip and a fitted start that is the ridge map."""

from __future__ import annotations

import pytest
import torch
from tiny import make_tokenizer

from latentqa.decoder.projector import (
    PROJECTOR_FILE,
    Projector,
    fit_ridge,
    mean_token_embeddings,
    token_norm,
)
from latentqa.errors import LatentQAError


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_save_load_round_trip(tmp_path, kind):
    torch.manual_seed(0)
    projector = Projector(3, 8, 6, kind)
    projector.init_random(target_norm=2.0)
    with torch.no_grad():
        for parameter in projector.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)  # every weight trained
    projector.save(tmp_path)
    loaded = Projector.load(tmp_path)
    assert loaded.kind == kind
    x = torch.randn(5, 3, 8)
    torch.testing.assert_close(loaded(x), projector(x), rtol=0, atol=0)


def test_load_refuses_a_missing_or_foreign_file(tmp_path):
    with pytest.raises(LatentQAError, match="lacks"):
        Projector.load(tmp_path)
    from safetensors.torch import save_file

    save_file({"other": torch.zeros(2)}, str(tmp_path / PROJECTOR_FILE))
    with pytest.raises(LatentQAError, match="not a latentqa projector"):
        Projector.load(tmp_path)


def test_each_slot_has_its_own_map():
    projector = Projector(2, 4, 4)
    with torch.no_grad():
        projector.weight[0] = torch.eye(4)
        projector.weight[1] = 2 * torch.eye(4)
    x = torch.randn(3, 2, 4)
    out = projector(x)  # [3, 2, 4]
    torch.testing.assert_close(out[:, 0], x[:, 0])
    torch.testing.assert_close(out[:, 1], 2 * x[:, 1])
    with pytest.raises(LatentQAError, match="maps 2 vectors"):
        projector(torch.randn(3, 3, 4))


def test_fitted_start_reproduces_the_ridge_map():
    # Targets that are an exact affine function of slot 0 (slot 1 is noise): with a tiny
    # penalty the fit recovers the map, and the projector reproduces the fit's outputs.
    torch.manual_seed(0)
    n, d_in, d_out = 200, 5, 3
    x = torch.randn(n, 2, d_in)
    true_w, true_b = torch.randn(d_in, d_out), torch.randn(d_out)
    targets = x[:, 0] @ true_w + true_b
    weight, bias = fit_ridge(x, targets, alpha=1e-6)
    torch.testing.assert_close(weight[0], true_w, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(bias[0], true_b, atol=1e-4, rtol=1e-4)
    # The same solution as the normal equations solved directly (slot 1).
    z = x[:, 1].double() - x[:, 1].double().mean(0)
    t = targets.double() - targets.double().mean(0)
    direct = torch.linalg.solve(z.T @ z + 3.0 * torch.eye(d_in, dtype=torch.float64), z.T @ t)
    weight3, _ = fit_ridge(x, targets, alpha=3.0)
    torch.testing.assert_close(weight3[1], direct.float(), atol=1e-5, rtol=1e-5)
    projector = Projector(2, d_in, d_out)
    projector.init_fitted(weight, bias)
    with torch.no_grad():
        torch.testing.assert_close(projector(x)[:, 0], targets, atol=1e-3, rtol=1e-3)
    mlp = Projector(2, d_in, d_out, "mlp")
    mlp.init_fitted(weight, bias)  # the residual MLP starts at zero: same outputs
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), projector(x))


def test_fit_rescales_to_the_token_norm():
    torch.manual_seed(1)
    x = torch.randn(50, 1, 4)
    weight, bias = fit_ridge(x, torch.randn(50, 4), alpha=1.0, target_norm=7.0)
    norms = (x[:, 0] @ weight[0] + bias[0]).norm(dim=-1)
    assert float(norms.median()) == pytest.approx(7.0, rel=1e-4)


def test_random_start_has_token_sized_outputs():
    projector = Projector(3, 64, 64)
    projector.init_random(target_norm=5.0)
    with torch.no_grad():
        out = projector(torch.randn(100, 3, 64))
    assert float(out.norm(dim=-1).mean()) == pytest.approx(5.0, rel=0.1)


def test_mean_token_embeddings():
    tiny_tokenizer = make_tokenizer()
    embeddings = torch.nn.Embedding(len(tiny_tokenizer), 4)
    ids = tiny_tokenizer("hello world", add_special_tokens=False)["input_ids"]
    expected = embeddings.weight[ids].mean(0)
    (row,) = mean_token_embeddings(embeddings, tiny_tokenizer, ["hello world"])
    torch.testing.assert_close(row, expected.detach())
    assert token_norm(embeddings) > 0
    with pytest.raises(LatentQAError, match="empty"):
        mean_token_embeddings(embeddings, tiny_tokenizer, [""])
