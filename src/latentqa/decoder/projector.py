"""A projector in front of the decoder: read vectors -> the decoder's input-embedding space.

A decoder that reads a few pooled vectors (one per read layer and pooling, a *slot*)
learns faster when each vector first goes through a small trainable map into the space
of its own token embeddings, as image features do in visual instruction tuning. The map
starts from data, not at random: :func:`fit_ridge` fits each slot's linear map in closed
form (ridge regression) from the read vectors to a target in embedding space, such as
the decoder's mean input embedding of the hidden prompt's tokens, so that before any
training the soft tokens already carry what a linear probe finds.

A trained projector is saved beside the adapter as :data:`PROJECTOR_FILE` (safetensors)
and described by the decoder spec's ``projector`` field.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from latentqa.errors import LatentQAError

PROJECTOR_FILE = "projector.safetensors"
PROJECTOR_KINDS: tuple[str, ...] = ("none", "linear", "mlp")
"""``none``: vectors go in as they are; ``linear``: one affine map per slot; ``mlp``: the
same affine map plus a residual two-layer MLP whose output starts at zero (so a fitted
start is the linear fit exactly)."""


class Projector(nn.Module):
    """One map per slot from a read vector ``[d_in]`` to an input embedding ``[d_out]``.

    The slot maps are stored stacked (``weight [n_slots, d_in, d_out]``), so all slots
    of a batch are projected in one batched matmul.

    Args:
        n_slots: Vectors per read (read layers x poolings), each with its own map.
        d_in: The target's hidden size.
        d_out: The decoder's embedding size.
        kind: ``linear`` or ``mlp`` (see :data:`PROJECTOR_KINDS`).
        hidden: The MLP's hidden width (default ``d_out``); unused for ``linear``.
    """

    def __init__(
        self, n_slots: int, d_in: int, d_out: int, kind: str = "linear", hidden: int | None = None
    ) -> None:
        super().__init__()
        if kind not in PROJECTOR_KINDS[1:]:
            raise LatentQAError(f"unknown projector {kind!r}; use one of linear, mlp")
        if min(n_slots, d_in, d_out) < 1:
            raise LatentQAError(f"projector sizes must be positive, got {n_slots, d_in, d_out}")
        self.kind = kind
        self.weight = nn.Parameter(torch.zeros(n_slots, d_in, d_out))
        self.bias = nn.Parameter(torch.zeros(n_slots, d_out))
        if kind == "mlp":
            width = hidden or d_out
            self.up = nn.Parameter(torch.randn(n_slots, d_in, width) / math.sqrt(d_in))
            self.up_bias = nn.Parameter(torch.zeros(n_slots, width))
            self.down = nn.Parameter(torch.zeros(n_slots, width, d_out))  # residual starts at 0

    @property
    def n_slots(self) -> int:
        return self.weight.shape[0]

    def forward(self, vectors: torch.Tensor, slots: Sequence[int] | None = None) -> torch.Tensor:
        """``[..., n, d_in]`` -> ``[..., n, d_out]``: vector ``j`` through the map of slot
        ``slots[j]`` (default: all slots in order, ``n = n_slots``).

        Differentiable in ``vectors`` (steering trains the target through it) and in
        the maps (training).
        """
        index = list(range(self.n_slots)) if slots is None else list(slots)
        if vectors.shape[-2:] != (len(index), self.weight.shape[1]) or not all(
            0 <= i < self.n_slots for i in index
        ):
            raise LatentQAError(
                f"the projector maps {self.n_slots} vectors of size {self.weight.shape[1]}, "
                f"got shape {tuple(vectors.shape)}: the decoder reads other layers or pooling"
            )
        weight, bias = self.weight[index], self.bias[index]  # [n, d_in, d_out], [n, d_out]
        x = vectors.to(weight.dtype)
        out = torch.einsum("...si,sio->...so", x, weight) + bias  # [..., n, d_out]
        if self.kind == "mlp":
            inner = torch.einsum("...si,sih->...sh", x, self.up[index]) + self.up_bias[index]
            down = self.down[index]  # [n, hidden, d_out]
            out = out + torch.einsum("...sh,sho->...so", nn.functional.gelu(inner), down)
        return out

    @torch.no_grad()
    def init_random(self, target_norm: float, seed: int = 0) -> None:
        """Orthogonal maps scaled so a standardized input (norm ~ sqrt(d_in)) comes out at
        ``target_norm``, the decoder's typical token-embedding norm; zero biases."""
        generator = torch.Generator().manual_seed(seed)
        d_in = self.weight.shape[1]
        for slot in range(self.n_slots):
            block = torch.empty(self.weight.shape[1:])
            nn.init.orthogonal_(block, generator=generator)
            self.weight[slot] = block * (target_norm / math.sqrt(d_in))
        self.bias.zero_()

    @torch.no_grad()
    def init_fitted(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Start from fitted maps (:func:`fit_ridge`): ``weight [n_slots, d_in, d_out]``,
        ``bias [n_slots, d_out]``."""
        if weight.shape != self.weight.shape or bias.shape != self.bias.shape:
            raise LatentQAError(
                f"fitted maps of shape {tuple(weight.shape)} do not fit a projector of "
                f"shape {tuple(self.weight.shape)}"
            )
        self.weight.copy_(weight)
        self.bias.copy_(bias)

    def save(self, folder: str | Path) -> Path:
        """Write the weights to ``folder / PROJECTOR_FILE`` (safetensors); returns the path."""
        from safetensors.torch import save_file

        path = Path(folder, PROJECTOR_FILE)
        state = {
            name: t.detach().float().cpu().contiguous() for name, t in self.state_dict().items()
        }
        save_file(state, str(path), metadata={"kind": self.kind})
        return path

    @classmethod
    def load(cls, folder: str | Path, device: torch.device | str = "cpu") -> Projector:
        """Read a projector saved by :meth:`save` (safetensors only: nothing is unpickled).

        Raises:
            LatentQAError: The file is missing or does not hold a projector.
        """
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        path = Path(folder, PROJECTOR_FILE)
        if not path.is_file():
            raise LatentQAError(f"{folder} lacks {PROJECTOR_FILE}: retrain the decoder")
        try:
            state = load_file(str(path))
            with safe_open(str(path), "pt") as handle:
                kind = (handle.metadata() or {}).get("kind", "linear")
            n_slots, d_in, d_out = state["weight"].shape
            hidden = state["up"].shape[-1] if "up" in state else None
            projector = cls(n_slots, d_in, d_out, kind, hidden)
            projector.load_state_dict(state)
        except (SafetensorError, KeyError, ValueError, RuntimeError, OSError) as error:
            raise LatentQAError(f"{path} is not a latentqa projector ({error})") from None
        return projector.to(device)


def fit_ridge(
    features: torch.Tensor, targets: torch.Tensor, alpha: float = 100.0, target_norm: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per slot, the ridge map from read vectors to embedding-space targets, in closed form.

    Slot ``i`` solves ``min ||(X_i - mean) W + b - T||^2 + alpha ||W||^2`` in float64.
    With ``target_norm`` the map (weight and bias) is rescaled so that its median output
    norm on ``features`` equals ``target_norm`` (a mean of token embeddings is shorter
    than a token embedding; the decoder expects token-sized inputs).

    Args:
        features: ``[n, n_slots, d_in]`` read vectors (standardized as the decoder reads
            them).
        targets: ``[n, d_out]``, e.g. :func:`mean_token_embeddings` of each hidden prompt,
            or ``[n, n_slots, d_out]``: one target per slot (another projector's outputs).
        alpha: Ridge penalty.
        target_norm: Output norm to match (0: no rescaling).

    Returns:
        ``weight [n_slots, d_in, d_out]`` and ``bias [n_slots, d_out]`` (float32), for
        :meth:`Projector.init_fitted`.

    Raises:
        LatentQAError: Shapes that disagree, or fewer than two rows.
    """
    per_slot = targets.dim() == 3 and targets.shape[1] == features.shape[1]
    if features.dim() != 3 or not (targets.dim() == 2 or per_slot) or len(features) != len(targets):
        raise LatentQAError(
            f"need features [n, slots, d_in] and targets [n, d_out] or [n, slots, d_out] "
            f"with the same n, got {tuple(features.shape)} and {tuple(targets.shape)}"
        )
    if len(features) < 2:
        raise LatentQAError("fitting a projector needs at least two examples")
    x = features.double()  # [n, slots, d_in]
    weights, biases = [], []
    eye = torch.eye(x.shape[-1], dtype=torch.float64)
    for slot in range(x.shape[1]):
        t = targets[:, slot].double() if per_slot else targets.double()  # [n, d_out]
        t_mean = t.mean(0)  # [d_out]
        x_mean = x[:, slot].mean(0)  # [d_in]
        z = x[:, slot] - x_mean  # [n, d_in]
        w = torch.linalg.solve(z.T @ z + alpha * eye, z.T @ (t - t_mean))  # [d_in, d_out]
        b = t_mean - x_mean @ w  # [d_out]
        if target_norm > 0:
            norms = (x[:, slot] @ w + b).norm(dim=-1)  # [n]
            scale = target_norm / float(norms.median().clamp_min(1e-12))
            w, b = w * scale, b * scale
        weights.append(w)
        biases.append(b)
    return torch.stack(weights).float(), torch.stack(biases).float()


@torch.no_grad()
def mean_token_embeddings(
    embeddings: nn.Embedding | torch.Tensor,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
) -> torch.Tensor:
    """The mean input embedding of each text's tokens, ``[len(texts), d_model]`` (float32).

    A bag of words in the decoder's own input space: the target that a fitted projector
    maps a read toward. A module is called (so an embedding that scales its rows, as
    Gemma's does, gives what the decoder's blocks see); a tensor is indexed.
    """
    rows = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise LatentQAError("cannot embed an empty text")
        rows.append(_embed(embeddings, ids).float().mean(0).cpu())
    return torch.stack(rows)


@torch.no_grad()
def text_soft_tokens(
    embeddings: nn.Embedding | torch.Tensor,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
) -> torch.Tensor:
    """Each text's mean input embedding, ``[len(texts), d_model]``, all scaled by one factor
    so that their median norm is a token embedding's: the soft token a fitted projector
    aims at for a dialog whose hidden text is that text (the verbalizer's input, and the
    evaluation's text oracle)."""
    means = mean_token_embeddings(embeddings, tokenizer, texts)
    return means * token_norm(embeddings) / means.norm(dim=-1).median().clamp_min(1e-12)


@torch.no_grad()
def token_norm(embeddings: nn.Embedding | torch.Tensor) -> float:
    """The median norm of the decoder's token embeddings (what soft tokens are scaled to)."""
    weight = embeddings.weight if isinstance(embeddings, nn.Module) else embeddings
    norms = [  # chunks: a large vocabulary's embeddings need not be copied at once
        _embed(embeddings, range(start, min(start + 4096, len(weight)))).float().norm(dim=-1)
        for start in range(0, len(weight), 4096)
    ]
    return float(torch.cat(norms).median())


def _embed(embeddings: nn.Embedding | torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
    """Input embeddings of ``ids``, ``[len(ids), d_model]``."""
    weight = embeddings.weight if isinstance(embeddings, nn.Module) else embeddings
    index = torch.tensor(list(ids), device=weight.device)
    return embeddings(index) if isinstance(embeddings, nn.Module) else weight[index]
