"""The ordinary prompts that steering reads the target on: a file's, or the built-in ones."""

from __future__ import annotations

from pathlib import Path

import torch

from latentqa.data.sources import load_user_prompts
from latentqa.errors import LatentQAError
from latentqa.json_files import read_json, read_text


def load_prompts(
    path: str | Path | None = None, limit: int | None = None, seed: int = 0
) -> list[str]:
    """Prompts to read the target on: a file's, or the built-in ordinary user prompts.

    Args:
        path: A JSON list of strings, or a text file with one prompt per line;
            ``None``: :func:`latentqa.data.sources.load_user_prompts`.
        limit: Keep at most this many (a fixed random sample, in file order).
        seed: Seed of the sample.

    Raises:
        LatentQAError: The file is missing, unreadable, not UTF-8, not a JSON list of
            strings (``.json``), or holds no prompt.
    """
    if path is None:
        prompts = load_user_prompts()
    else:
        path = Path(path).expanduser()
        if path.suffix.lower() == ".json":
            prompts = read_json(path, "prompts file")
            if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
                raise LatentQAError(f"prompts file {path} must hold a JSON list of strings")
        else:
            prompts = read_text(path, "prompts file").splitlines()
        prompts = [p.strip() for p in prompts if p.strip()]
    if not prompts:
        raise LatentQAError(f"no prompts in {path}")
    if limit is not None and limit < len(prompts):
        keep = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed))[:limit]
        prompts = [prompts[i] for i in sorted(keep.tolist())]
    return prompts
