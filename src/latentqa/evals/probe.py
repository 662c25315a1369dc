"""Linear probes on pooled activations: ridge regression and multinomial logistic regression.

Both are closed-form or full-batch L-BFGS in torch, standardising features on the
training set, with the regularisation picked on a held-out slice of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

LAMBDAS = (0.1, 1.0, 10.0, 100.0, 1000.0)


@dataclass
class Standardizer:
    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor) -> Standardizer:
        return cls(x.mean(0), x.std(0).clamp_min(1e-6))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _ridge_solve(x: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    # [d+1, k] weights with a bias column; the bias is not penalised.
    xb = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    penalty = torch.eye(xb.shape[1], dtype=x.dtype) * lam
    penalty[-1, -1] = 0
    return torch.linalg.solve(xb.T @ xb + penalty, xb.T @ y)


@dataclass
class RidgeProbe:
    """Linear map from activations to targets (e.g. sentence embeddings)."""

    scale: Standardizer
    weights: torch.Tensor
    lam: float

    @classmethod
    def fit(
        cls, x: torch.Tensor, y: torch.Tensor, seed: int = 0, lambdas: Sequence[float] = LAMBDAS
    ) -> RidgeProbe:
        """Standardize ``x``, pick the penalty among ``lambdas`` on a held-out fifth, refit."""
        x, y = x.double(), y.double()
        scale = Standardizer.fit(x)
        xs = scale(x)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        cut = max(1, len(x) // 5)
        val, fit = order[:cut], order[cut:]

        def error(lam: float) -> float:
            w = _ridge_solve(xs[fit], y[fit], lam)
            pred = torch.cat([xs[val], torch.ones(len(val), 1, dtype=xs.dtype)], 1) @ w
            return float(((pred - y[val]) ** 2).mean())

        lam = min(lambdas, key=error)
        return cls(scale, _ridge_solve(xs, y, lam), lam)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        xs = self.scale(x.double())
        return (torch.cat([xs, torch.ones(len(xs), 1, dtype=xs.dtype)], 1) @ self.weights).float()


@dataclass
class LogisticProbe:
    """Multinomial logistic regression over a closed set of classes."""

    scale: Standardizer
    linear: torch.nn.Linear
    classes: list[str]

    @classmethod
    def fit(
        cls, x: torch.Tensor, labels: Sequence[str], l2: float = 1e-2, steps: int = 200
    ) -> LogisticProbe:
        classes = sorted(set(labels))
        index = {c: i for i, c in enumerate(classes)}
        y = torch.tensor([index[label] for label in labels])
        scale = Standardizer.fit(x.float())
        xs = scale(x.float())
        torch.manual_seed(0)
        linear = torch.nn.Linear(xs.shape[1], len(classes))
        optimizer = torch.optim.LBFGS(
            linear.parameters(), max_iter=steps, line_search_fn="strong_wolfe"
        )

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(linear(xs), y)
            loss = loss + l2 * linear.weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        return cls(scale, linear.requires_grad_(False), classes)

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.linear(self.scale(x.float())), -1)

    def predict(self, x: torch.Tensor) -> list[str]:
        return [self.classes[i] for i in self.predict_proba(x).argmax(-1).tolist()]
