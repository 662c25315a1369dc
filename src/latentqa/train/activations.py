"""Where the decoder's input vectors come from: the frozen target, live or cached.

The target is the decoder's own base model with its adapters switched off, so
training holds one copy of the weights. Its activations depend only on the
dialog, so many QA examples of one behaviour share one read, and for a fixed
dataset all reads can be computed once and cached on disk (``--cache-activations``),
under a key that covers the target's weight files, so a model changed in place is
read afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from latentqa.capture import pad_token_id, read_encoded
from latentqa.chat import EncodedDialog
from latentqa.decoder.inputs import flatten_reads, standardizer
from latentqa.errors import LatentQAError
from latentqa.handle import TargetHandle
from latentqa.layers import DecoderLayers


def weights_fingerprint(target: str) -> str:
    """What identifies ``target``'s weights on disk, for cache keys.

    A local folder or GGUF file (the embedded model included): name, size and
    modification time of each file (a folder's top level), so a model rewritten in
    place gets a new key. A hub id: the id itself (the loaded config's revision is
    added by :meth:`ActivationSource.fingerprint`).
    """
    from latentqa.models import _classify_spec

    try:
        kind, where = _classify_spec(target)
    except LatentQAError:
        return str(target)  # not a loadable spec: the model was given some other way
    path = Path(where)
    if kind == "hub" or not path.exists():
        return str(target)
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    return json.dumps([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files])


class ActivationSource:
    """Flattened read vectors ``[n_layers * kept, d_model]`` (pooled: ``[n_layers * width,
    d_model]``) for encoded dialogs.

    Args:
        target: The model whose activations are read.
        dialogs: Every dialog that may be asked for, by index.
        pad_id: Padding token id for batching.
        read_layers: Target blocks to read.
        max_read_tokens: Positions kept per dialog (the last ones).
        target_context: Called around every read, e.g. ``peft_model.disable_adapter``
            so that the decoder's own weights act as the frozen target.
        blocks: The target's decoder blocks (searched when ``None``).
        pool: ``none``, ``mean``, ``last`` or ``mean+last`` (see
            :func:`latentqa.decoder.inputs.flatten_reads`; the cache key covers it).
        baselines: Per dialog, the dialog whose read is subtracted from its read
            (``--read-contrast no-system``: the same turn without its system prompt;
            ``None`` for a dialog without one, which reads zeros). Unset: plain reads.

    :meth:`from_handle` builds one from a :class:`~latentqa.handle.TargetHandle`, whose
    ``target()`` is the one way to switch the decoder's adapters off.

    Set :attr:`scale` (see :func:`latentqa.decoder.standardizer`) to standardize the
    vectors; :meth:`compute` and :meth:`get` apply it. The cache holds the raw vectors,
    so its key does not depend on the statistics (fit on reads whose last bits can
    differ between runs in bfloat16: a resumed run would otherwise recompute it).
    """

    def __init__(
        self,
        target: nn.Module,
        dialogs: Sequence[EncodedDialog],
        pad_id: int,
        read_layers: Sequence[int],
        max_read_tokens: int,
        *,
        target_context: Callable[[], AbstractContextManager] = nullcontext,
        blocks: DecoderLayers | None = None,
        pool: str = "none",
        baselines: Sequence[EncodedDialog | None] | None = None,
    ) -> None:
        self.target = target
        self.dialogs = list(dialogs)
        self.pad_id = pad_id
        self.read_layers = list(read_layers)
        self.max_read_tokens = max_read_tokens
        self.target_context = target_context
        self.blocks = blocks
        self.pool = pool
        self.scale: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.baselines = None if baselines is None else list(baselines)
        if self.baselines is not None and len(self.baselines) != len(self.dialogs):
            raise ValueError(f"{len(self.baselines)} baselines for {len(self.dialogs)} dialogs")
        # Rows of every read the source needs: the dialogs, then each baseline.
        self._rows = self.dialogs + [b for b in self.baselines or [] if b is not None]
        self._baseline_row: dict[int, int] = {}
        for i, baseline in enumerate(self.baselines or []):
            if baseline is not None:
                self._baseline_row[i] = len(self.dialogs) + len(self._baseline_row)
        self._cache: dict[int, torch.Tensor] | None = None
        """Raw reads by row (see ``_rows``), once loaded."""

    @classmethod
    def from_handle(
        cls,
        handle: TargetHandle,
        dialogs: Sequence[EncodedDialog],
        read_layers: Sequence[int],
        max_read_tokens: int,
        *,
        pool: str = "none",
    ) -> ActivationSource:
        """A source reading ``handle``'s plain target, with its blocks and pad id."""
        return cls(
            handle.model,
            dialogs,
            pad_token_id(handle.tokenizer),
            read_layers,
            max_read_tokens,
            target_context=handle.target,
            blocks=handle.blocks,
            pool=pool,
        )

    def compute(self, indices: Sequence[int]) -> list[torch.Tensor]:
        """The given dialogs' vectors, standardized if set: read now (one padded batch; a
        contrast source reads the baselines in a second) or from the cache once loaded."""
        return [self._scaled(v) for v in self._raw(indices)]

    def _scaled(self, vector: torch.Tensor) -> torch.Tensor:
        return vector if self.scale is None else self.scale(vector)

    def _raw(self, indices: Sequence[int]) -> list[torch.Tensor]:
        """Unstandardized vectors of dialogs: contrasted when there are baselines."""
        plain = self._read_rows(indices)
        return plain if self.baselines is None else self._contrasted(indices, plain)

    def _contrasted(self, indices: Sequence[int], plain: list[torch.Tensor]) -> list[torch.Tensor]:
        rows = [self._baseline_row[i] for i in indices if i in self._baseline_row]
        baselines = iter(self._read_rows(rows))
        return [
            v - next(baselines) if i in self._baseline_row else torch.zeros_like(v)
            for i, v in zip(indices, plain, strict=True)
        ]

    @torch.no_grad()
    def _read_rows(self, rows: Sequence[int]) -> list[torch.Tensor]:
        """Raw vectors of rows (dialogs, then baselines): from the cache when loaded."""
        if not rows:
            return []
        if self._cache is not None:
            device = next(self.target.parameters()).device
            return [self._cache[r].to(device) for r in rows]
        with self.target_context():
            spans = read_encoded(
                self.target,
                [self._rows[r] for r in rows],
                self.pad_id,
                self.read_layers,
                blocks=self.blocks,
            )
        return [flatten_reads(span, self.max_read_tokens, self.pool).clone() for span in spans]

    def plain(self, indices: Sequence[int]) -> list[torch.Tensor]:
        """The dialogs' own reads, unstandardized and not contrasted (what a decoder of
        plain reads is given: ``--projector-init distilled``)."""
        return self._read_rows(indices)

    def standardize(self, mean: list[float], std: list[float]) -> None:
        """From now on, return vectors standardized with these per-dimension statistics."""
        self.scale = standardizer(mean, std)

    def get(self, indices: Sequence[int]) -> list[torch.Tensor]:
        """Vectors for ``indices``: from the cache when loaded, else computed now."""
        if self._cache is not None:
            return [self._scaled(v) for v in self._raw(indices)]
        unique = sorted(set(indices))
        computed = dict(zip(unique, self.compute(unique), strict=True))
        return [computed[i] for i in indices]

    def read_key(self, target_name: str) -> str:
        """What identifies a read apart from its dialog: the target's weights
        (:func:`weights_fingerprint`, and the hub revision its config was loaded from), the
        read options and the dtype."""
        meta = [
            target_name,
            self.read_layers,
            self.max_read_tokens,
            None if self.blocks is None else self.blocks.path,
            self.pool,
        ]
        meta.append(str(next(self.target.parameters()).dtype))
        meta.append(weights_fingerprint(target_name))
        meta.append(getattr(getattr(self.target, "config", None), "_commit_hash", None))
        return json.dumps(meta)

    def fingerprint(self, target_name: str) -> str:
        """A key that changes whenever the cached reads would: :meth:`read_key` and every
        dialog."""
        digest = hashlib.sha256()
        digest.update(self.read_key(target_name).encode())
        for dialog in self.dialogs:
            digest.update(json.dumps([dialog.input_ids, dialog.read_start]).encode())
        if self.baselines is not None:  # plain sources keep the keys they always had
            for i, row in sorted(self._baseline_row.items()):
                baseline = self._rows[row]
                digest.update(json.dumps([i, baseline.input_ids, baseline.read_start]).encode())
        return digest.hexdigest()[:16]

    def load_or_build_cache(
        self,
        path: Path,
        batch_size: int = 16,
        progress: bool = True,
        build: bool = True,
        read_key: str | None = None,
    ) -> None:
        """Fill the in-memory cache from ``path``, computing and writing it if absent.

        With ``read_key`` (:meth:`read_key`) the file records it and each dialog's key,
        and a new file takes the reads of dialogs it shares with the other caches of
        its folder that have the same ``read_key``: a dataset with more data added reads
        only the new dialogs. With ``build=False`` (non-zero ranks of a multi-process
        run) only loads: the caller synchronises after rank 0 built the file.
        """
        if not path.exists() and build:
            keys = [dialog_key(dialog) for dialog in self._rows]
            vectors = _reuse(path.parent, read_key, keys) if read_key is not None else {}
            # Similar lengths together: less padding, faster reads.
            todo = [i for i in range(len(self._rows)) if str(i) not in vectors]
            order = sorted(todo, key=lambda i: len(self._rows[i].input_ids))
            desc = "caching target activations"
            if vectors:
                desc += f" ({len(vectors)} of {len(keys)} from earlier caches)"
            for chunk in tqdm(list(_chunks(order, batch_size)), desc=desc, disable=not progress):
                for i, v in zip(chunk, self._read_rows(chunk), strict=True):
                    vectors[str(i)] = v.cpu().contiguous()
            metadata = None
            if read_key is not None:
                metadata = {READ_KEY: read_key, DIALOG_KEYS: json.dumps(keys)}
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            save_file(vectors, str(tmp), metadata=metadata)
            os.replace(tmp, path)  # atomic: a killed run never leaves half a cache
        loaded = load_file(str(path))
        self._cache = {int(k): v for k, v in loaded.items()}


def run_reads(
    decoder: nn.Module,
    dialogs: Sequence[EncodedDialog],
    tokenizer,
    read_layers: Sequence[int],
    config,
    blocks: DecoderLayers | None = None,
    baselines: Sequence[EncodedDialog | None] | None = None,
) -> ActivationSource:
    """A LIT run's reads: the decoder with its adapter off (the frozen target) reading
    ``dialogs`` at ``read_layers``, pooled and truncated as ``config`` (a
    :class:`~latentqa.train.config.TrainConfig`) says, minus the ``baselines``' reads
    when given (``--read-contrast``)."""
    return ActivationSource(
        decoder,
        dialogs,
        pad_token_id(tokenizer),
        list(read_layers),
        config.max_read_tokens,
        target_context=decoder.disable_adapter,
        blocks=blocks,
        pool=config.read_pool,
        baselines=baselines,
    )


READ_KEY = "latentqa_read_key"
DIALOG_KEYS = "latentqa_dialog_keys"
"""Metadata of a cache file: its :meth:`ActivationSource.read_key` and, in index order,
each dialog's :func:`dialog_key` (files written before these keys have neither)."""


def dialog_key(dialog: EncodedDialog) -> str:
    """What identifies a dialog's read: its token ids and where the read span starts."""
    text = json.dumps([dialog.input_ids, dialog.read_start])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _reuse(folder: Path, read_key: str, keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """Reads of ``keys`` found in the cache files of ``folder`` written with ``read_key``,
    by index into ``keys``."""
    wanted: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        wanted.setdefault(key, []).append(index)
    found: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        try:
            with safe_open(str(file), framework="pt") as cache:
                metadata = cache.metadata() or {}
                if metadata.get(READ_KEY) != read_key:
                    continue
                for stored, key in enumerate(json.loads(metadata[DIALOG_KEYS])):
                    for index in wanted.pop(key, []):
                        found[str(index)] = cache.get_tensor(str(stored)).contiguous()
        except (OSError, ValueError, KeyError, SafetensorError):
            continue  # not a cache of ours, or an unreadable one: read those dialogs afresh
    return found


def _chunks(items: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
