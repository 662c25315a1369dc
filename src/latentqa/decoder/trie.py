"""Prompts packed as token tries: every token prefix that prompts share is computed once.

Scoring many answers to one question about one read repeats most of each prompt: the
read's placeholders, the question, the template around them. :mod:`latentqa.decoder.packing`
shares the part up to the last placeholder; a *trie* shares every common token prefix:
the five options of a multiple-choice item share the question too, the ``Yes.`` and
``No.`` rows of a yes/no question share that question, and identical prompts are one
path. Each trie node is one token, computed once. A row holds one or more tries side by
side (left-padded); a node attends to its ancestors and itself only, and its position
id is its depth, so its hidden state equals the one it has in each of its prompts run
alone (up to float round-off). The LM head runs only at the nodes that predict a scored
token, and each such node once, however many prompts score a token after it.

Nodes are keyed by token id *and* placeholder slot (a placeholder token is never merged
with a text token of the same id), and a trie holds the prompts of one vectors object
only, so the vector written at a placeholder is the same for every prompt through it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from latentqa.decoder.loss import lm_head_logits
from latentqa.decoder.packing import pack_first_fit
from latentqa.errors import LatentQAError
from latentqa.models import unwrap_causal_lm

ROW_TOKENS = 256
"""Tries are packed into rows of up to this many tokens (or the longest trie), as the
prefix trees of :mod:`latentqa.decoder.packing` are: padding costs as much as a real
token, while attention grows with the square of a row's length."""
BATCH_TOKENS = 2048
"""Tokens per forward pass (rows x width)."""


@dataclass(frozen=True)
class TriePrompt:
    """One prompt to score: its ids, which of them count, where vectors go."""

    ids: Sequence[int]
    scored: Sequence[bool]
    """True on the tokens whose log-probability the prompt's score sums (never the first)."""
    slots: Sequence[int] | None = None
    """Per token, the index of the read vector written there, or -1 (``None``: no
    vectors, e.g. a plain model's prompt)."""


@dataclass
class _Trie:
    group: int  # the vectors object (prompt group) the trie belongs to
    tokens: list[int]
    slots: list[int]
    parents: list[int]  # -1 for a root
    depths: list[int]
    children: dict[tuple[int, int, int], int]  # (parent, token, slot) -> node

    @classmethod
    def empty(cls, group: int) -> _Trie:
        return cls(group, [], [], [], [], {})

    def new_nodes(self, ids: Sequence[int], slots: Sequence[int]) -> int:
        """How many nodes inserting this prompt would add."""
        parent = -1
        for at, key in enumerate(zip(ids, slots, strict=True)):
            node = self.children.get((parent, *key))
            if node is None:
                return len(ids) - at
            parent = node
        return 0

    def insert(self, ids: Sequence[int], slots: Sequence[int]) -> list[int]:
        """The prompt's node per token, adding the missing ones."""
        path, parent = [], -1
        for token, slot in zip(ids, slots, strict=True):
            node = self.children.get((parent, token, slot))
            if node is None:
                node = len(self.tokens)
                self.children[(parent, token, slot)] = node
                self.tokens.append(token)
                self.slots.append(slot)
                self.parents.append(parent)
                self.depths.append(0 if parent < 0 else self.depths[parent] + 1)
            path.append(node)
            parent = node
        return path

    def ancestors(self) -> torch.Tensor:
        """``[nodes, nodes]`` bool: node ``i`` may attend to node ``j`` (``j`` is ``i`` or
        one of its ancestors). Parents come before their children."""
        allowed = torch.eye(len(self.tokens), dtype=torch.bool)
        for node, parent in enumerate(self.parents):
            if parent >= 0:
                allowed[node] |= allowed[parent]
        return allowed


@dataclass
class TrieBatch:
    """Rows of packed tries, and which node predicts which scored token of which prompt."""

    input_ids: torch.Tensor  # [rows, seq] long, pad id on padding
    position_ids: torch.Tensor  # [rows, seq] long, each node's depth in its trie
    allowed: torch.Tensor  # [rows, seq, seq] bool, a node's ancestors and itself (padding: itself)
    vector_group: torch.Tensor  # [rows, seq] long: the group whose vector goes there, or -1
    vector_slot: torch.Tensor  # [rows, seq] long: which of its vectors, or -1
    predictors: torch.Tensor  # [n_scored] long, flat index (row * seq + position) of the node
    targets: torch.Tensor  # [n_scored] long, the token it should predict
    owners: torch.Tensor  # [n_scored] long, the prompt whose score counts it
    n_prompts: int
    n_prompt_tokens: int
    """Tokens of the prompts as if each ran alone (the unshared work)."""
    n_tokens: int
    """Nodes the model computes: every trie's tokens, padding excluded."""

    def body_inputs(
        self, rows: slice, device: torch.device, dtype: torch.dtype
    ) -> dict[str, torch.Tensor]:
        """Keyword inputs of the model's body for rows ``rows``: ids, positions, and the
        additive attention mask ``[n_rows, 1, seq, seq]`` in ``dtype`` (0 where allowed)."""
        allowed = self.allowed[rows].to(device)
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
        return {
            "input_ids": self.input_ids[rows].to(device),
            "attention_mask": mask.masked_fill(~allowed, torch.finfo(dtype).min).unsqueeze(1),
            "position_ids": self.position_ids[rows].to(device),
        }

    def slot_vectors(
        self, rows: slice, vectors: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The placeholder mask ``[n_rows, seq]`` of rows ``rows`` and the vectors written
        there, in row-major order ``[n_placeholders, d_model]`` (``vectors[g]`` is group
        ``g``'s ``[n, d_model]`` read)."""
        groups, slots = self.vector_group[rows], self.vector_slot[rows]
        mask = groups >= 0
        where = zip(groups[mask].tolist(), slots[mask].tolist(), strict=True)
        picked = [vectors[g][s] for g, s in where]
        return mask, torch.stack(picked) if picked else torch.zeros(0)


def pack_tries(
    groups: Sequence[Sequence[TriePrompt]],
    pad_id: int,
    row_tokens: int = ROW_TOKENS,
    trie_tokens: int | None = ROW_TOKENS,
) -> TrieBatch:
    """Lay out each group's prompts as tries (prompts of one group share vectors).

    Args:
        groups: Prompts per vectors object; prompts are numbered in group order.
        pad_id: Id put on padding.
        row_tokens: Row width to pack tries into (or the longest trie's size).
        trie_tokens: A group whose trie would outgrow this many nodes starts another
            trie (a prompt longer than that gets a trie of its own); ``None``: one trie
            per group.

    Returns:
        The batch; ``vector_group`` indexes ``groups``.

    Raises:
        LatentQAError: A prompt that scores its first token, or whose masks do not match
            its ids.
    """
    tries: list[_Trie] = []
    scored: list[tuple[int, int, int, int]] = []  # (trie, predicting node, target, prompt)
    number = 0
    n_prompt_tokens = 0
    for group, prompts in enumerate(groups):
        trie = _Trie.empty(group)
        for prompt in prompts:
            ids = list(prompt.ids)
            slots = [-1] * len(ids) if prompt.slots is None else list(prompt.slots)
            if not (len(prompt.scored) == len(slots) == len(ids)) or not ids:
                raise LatentQAError("a prompt needs one scored flag and one slot per token")
            if prompt.scored[0]:
                raise LatentQAError("a prompt's first token has nothing to predict it")
            full = trie_tokens is not None and trie.tokens
            if full and len(trie.tokens) + trie.new_nodes(ids, slots) > trie_tokens:
                tries.append(trie)
                trie = _Trie.empty(group)
            path = trie.insert(ids, slots)
            scored += [
                (len(tries), path[at - 1], ids[at], number)
                for at, flag in enumerate(prompt.scored)
                if flag
            ]
            number += 1
            n_prompt_tokens += len(ids)
        if trie.tokens:
            tries.append(trie)
    if not tries:
        raise LatentQAError("nothing to score: no prompts")
    lengths = [len(t.tokens) for t in tries]
    rows = pack_first_fit(lengths, max(max(lengths), row_tokens))
    shape = (len(rows), max(sum(lengths[t] for t in row) for row in rows))
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    allowed = torch.eye(shape[1], dtype=torch.bool).repeat(shape[0], 1, 1)
    vector_group = torch.full(shape, -1, dtype=torch.long)
    vector_slot = torch.full(shape, -1, dtype=torch.long)
    where = [0] * len(tries)  # flat index of each trie's first node
    for row, members in enumerate(rows):
        at = shape[1] - sum(lengths[t] for t in members)  # left padding
        for index in members:
            trie, span = tries[index], slice(at, at + lengths[index])
            input_ids[row, span] = torch.tensor(trie.tokens)
            position_ids[row, span] = torch.tensor(trie.depths)
            allowed[row, span, span] = trie.ancestors()
            slots = torch.tensor(trie.slots)
            vector_slot[row, span] = slots
            vector_group[row, span] = torch.where(slots >= 0, trie.group, -1)
            where[index] = row * shape[1] + at
            at += lengths[index]
    return TrieBatch(
        input_ids,
        position_ids,
        allowed,
        vector_group,
        vector_slot,
        torch.tensor([where[t] + node for t, node, _, _ in scored], dtype=torch.long),
        torch.tensor([target for _, _, target, _ in scored], dtype=torch.long),
        torch.tensor([prompt for _, _, _, prompt in scored], dtype=torch.long),
        number,
        n_prompt_tokens,
        sum(lengths),
    )


def _row_chunks(batch: TrieBatch, max_tokens: int) -> Iterator[slice]:
    rows, width = batch.input_ids.shape
    per_pass = max(1, max_tokens // width)
    for start in range(0, rows, per_pass):
        yield slice(start, min(start + per_pass, rows))


@torch.no_grad()
def trie_logprobs(
    model: nn.Module,
    batch: TrieBatch,
    run_body: Callable[[slice], torch.Tensor],
    *,
    max_tokens: int = BATCH_TOKENS,
    progress: Callable[[Iterable[slice]], Iterable[slice]] | None = None,
) -> torch.Tensor:
    """Per prompt, the summed log-probability of its scored tokens and their count.

    Args:
        model: The causal LM (or a peft model around it), for its LM head.
        batch: The packed prompts.
        run_body: ``run_body(rows)`` -> last hidden states ``[n_rows, seq, d_model]`` of
            ``batch``'s rows ``rows`` (a slice): the caller runs the model's body with the
            batch's ids, positions and mask, writing vectors where it must.
        max_tokens: Rows x width per forward pass.
        progress: Wraps the passes' row slices (e.g. a progress bar).

    Returns:
        ``[n_prompts, 2]`` float32: (sum of log-probabilities, number of scored tokens).
    """
    causal_lm = unwrap_causal_lm(model)
    width = batch.input_ids.shape[1]
    sums = torch.zeros(batch.n_prompts, dtype=torch.float32)
    counts = torch.zeros(batch.n_prompts, dtype=torch.float32)
    chunks: Iterable[slice] = _row_chunks(batch, max_tokens)
    for rows in chunks if progress is None else progress(chunks):
        lo, hi = rows.start * width, rows.stop * width
        inside = (batch.predictors >= lo) & (batch.predictors < hi)
        if not inside.any():
            continue
        hidden = run_body(rows)  # [n_rows, seq, d_model]
        flat = hidden.reshape(-1, hidden.shape[-1])
        # Each predicting node once, however many prompts score a token after it.
        nodes, which = torch.unique(batch.predictors[inside] - lo, return_inverse=True)
        device = flat.device
        logits = lm_head_logits(causal_lm, flat[nodes.to(device)]).float()  # [n_nodes, vocab]
        log_probs = F.log_softmax(logits, dim=-1)
        targets = batch.targets[inside].to(device)
        picked = log_probs[which.to(device), targets].cpu()  # [n_scored in these rows]
        sums.index_add_(0, batch.owners[inside], picked)
        counts.index_add_(0, batch.owners[inside], torch.ones_like(picked))
    return torch.stack([sums, counts], dim=-1)
