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

Nodes are keyed by token id, placeholder slot and, on a placeholder, the vectors object
written there: a placeholder is never merged with a text token of the same id nor with
another read's placeholder, so the vector written at a node is the same for every prompt
through it. Prompts of different reads share the text before their placeholders (the
question of a question-first decoder) when packed ``across_groups``.
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
ATTENTION_WIDTH = 3072
"""The row width at which a token's attention would cost about what its matmuls cost
(roughly; attention grows with the width): weighs the padding a wider row saves against
the attention it adds (:func:`packed_rows`)."""


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
    tokens: list[int]
    slots: list[int]
    groups: list[int]  # the vectors object written at a placeholder node; -1 on text
    parents: list[int]  # -1 for a root
    depths: list[int]
    children: dict[tuple[int, ...], int]  # (parent, *node key) -> node

    @classmethod
    def empty(cls) -> _Trie:
        return cls([], [], [], [], [], {})

    def new_nodes(self, keys: Sequence[tuple[int, int, int]]) -> int:
        """How many nodes inserting a prompt of these node keys would add."""
        parent = -1
        for at, key in enumerate(keys):
            node = self.children.get((parent, *key))
            if node is None:
                return len(keys) - at
            parent = node
        return 0

    def insert(self, keys: Sequence[tuple[int, int, int]]) -> list[int]:
        """The prompt's node per token, adding the missing ones."""
        path, parent = [], -1
        for key in keys:
            node = self.children.get((parent, *key))
            if node is None:
                token, slot, group = key
                node = len(self.tokens)
                self.children[(parent, *key)] = node
                self.tokens.append(token)
                self.slots.append(slot)
                self.groups.append(group)
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


def _node_keys(prompt: TriePrompt, group: int) -> list[tuple[int, int, int]]:
    """Per token ``(token, slot, group)``: a placeholder is keyed by the vectors written
    there (its group), a text token by its id alone (group -1)."""
    ids = list(prompt.ids)
    slots = [-1] * len(ids) if prompt.slots is None else list(prompt.slots)
    if not (len(prompt.scored) == len(slots) == len(ids)) or not ids:
        raise LatentQAError("a prompt needs one scored flag and one slot per token")
    if prompt.scored[0]:
        raise LatentQAError("a prompt's first token has nothing to predict it")
    return [(t, slot, group if slot >= 0 else -1) for t, slot in zip(ids, slots, strict=True)]


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
    *,
    across_groups: bool = False,
) -> TrieBatch:
    """Lay out each group's prompts as tries (prompts of one group share vectors).

    Args:
        groups: Prompts per vectors object; prompts are numbered in group order.
        pad_id: Id put on padding.
        row_tokens: Row width to pack tries into (or the longest trie's size).
        trie_tokens: A trie that would outgrow this many nodes is closed and another
            started (a prompt longer than that gets a trie of its own); ``None``: no cap.
        across_groups: Prompts of different groups share the text before their first
            placeholder too (one trie holds several groups, prompts sorted so that
            common prefixes meet): a question asked before the vectors is computed once
            for every read. Otherwise each trie holds one group's prompts, in order.

    Returns:
        The batch; ``vector_group`` indexes ``groups``.

    Raises:
        LatentQAError: A prompt that scores its first token, or whose masks do not match
            its ids.
    """
    numbered = [(group, prompt) for group, prompts in enumerate(groups) for prompt in prompts]
    keys = [_node_keys(prompt, group) for group, prompt in numbered]
    order = range(len(numbered))
    if across_groups:
        order = sorted(order, key=keys.__getitem__)
    tries: list[_Trie] = []
    scored: list[tuple[int, int, int, int]] = []  # (trie, predicting node, target, prompt)
    trie, last_group = _Trie.empty(), None
    for number in order:
        group, prompt = numbered[number]
        opened = bool(trie.tokens)
        new_group = opened and not across_groups and group != last_group
        full = opened and trie_tokens is not None
        if new_group or (full and len(trie.tokens) + trie.new_nodes(keys[number]) > trie_tokens):
            tries.append(trie)
            trie = _Trie.empty()
        path = trie.insert(keys[number])
        scored += [
            (len(tries), path[at - 1], token, number)
            for at, (token, flag) in enumerate(zip(prompt.ids, prompt.scored, strict=True))
            if flag
        ]
        last_group = group
    if trie.tokens:
        tries.append(trie)
    if not tries:
        raise LatentQAError("nothing to score: no prompts")
    lengths = [len(t.tokens) for t in tries]
    rows = packed_rows(lengths, row_tokens)
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
            vector_slot[row, span] = torch.tensor(trie.slots)
            vector_group[row, span] = torch.tensor(trie.groups)
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
        len(numbered),
        sum(len(k) for k in keys),
        sum(lengths),
    )


def packed_rows(lengths: Sequence[int], row_tokens: int) -> list[list[int]]:
    """Tries (by length) packed into rows, first-fit decreasing, at the cheapest width
    from ``row_tokens`` (or the longest trie) up to twice that.

    Padding costs as much as a real token, and every row is padded to the fullest one:
    tries of 190 and 130 tokens take a row each at 256 (1,900 slots for five pairs), a
    row per pair at 320 (1,600). A packing's cost is its slots times ``1 + width /
    ATTENTION_WIDTH`` (wider rows attend over more tokens). The black box's tries (a
    dialog, its reply and five answers) went from 41,472 slots to 28,480 (26,384 tokens).
    """
    base = max(max(lengths), row_tokens)
    best: tuple[float, list[list[int]]] | None = None
    for width in sorted({base * k // 8 for k in range(8, 17)}):
        rows = pack_first_fit(list(lengths), width)
        used = max(sum(lengths[t] for t in row) for row in rows)
        cost = len(rows) * used * (1 + used / ATTENTION_WIDTH)
        if best is None or cost < best[0]:
            best = (cost, rows)
    assert best is not None
    return best[1]


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
