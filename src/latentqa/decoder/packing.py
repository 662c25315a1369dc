"""Answer losses with each read computed once: prompts that share a prefix, packed.

Several decoder prompts often read the same activations: the QA pairs of one training
dialog, or every option scored for one question. Up to the last placeholder those
prompts are the same ids with the same vectors patched in, so the decoder's hidden
states there are the same too. Pack them into one row: the prefix once, then every
prompt's own tokens (its *branch*), with an attention mask under which a branch sees
the prefix and itself but no other branch, and position ids that restart each branch
where the prefix ends. :func:`latentqa.decoder.loss.answer_token_loss` takes such a
batch; its loss and gradients equal those of the unpacked prompts (tested); the
prefix is computed once, in one forward pass (a second pass over a cache cost as much
in per-op overhead on a CPU as the prefix it saved).

One tree (``P`` placeholders, from :func:`latentqa.decoder.prompt.build_decoder_prompt`);
a row holds one or more trees side by side, left-padded::

    <header> <user> P P ... P | \\n Q1 <end> <assistant> A1 | \\n Q2 ... A2 | ...
    segments  0 ........... 0 | 1 ....................... 1 | 2 ........ 2 |

A tree's prefix is what its prompts really share: up to the last placeholder. In the
``question-first`` prompt order the question comes before the placeholders, so only
prompts of one read that ask the same question (the options scored for it) share a
tree; each other question gets a tree of its own, its read's vectors repeated.

The trees of a batch also share their first tokens, before any placeholder (the chat
template's header, e.g. a default system prompt): each row computes that *header* once,
at its start, and every tree of the row continues it (positions after the header, seeing
it and itself only)::

    <header> | <user> P P P \n Q1 ... A1 | <user> P P \n Q2 ... A2 | ...
    tree -2  | tree 0 .................... | tree 1 ................. |
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

from latentqa.capture import pad_token_id
from latentqa.decoder.loss import RowLayout
from latentqa.decoder.prompt import build_decoder_prompt
from latentqa.errors import LatentQAError

# Measured on the embedded model (docs/performance.md): rows of ~256 tokens ran a
# training step faster than one row per tree (~180) and than ~512.
ROW_TOKENS = 256
PADDING = -1
"""``SharedBatch.trees`` on padding."""
HEADER = -2
"""``SharedBatch.trees`` on a row's header: the tokens every tree of the batch opens with."""


@dataclass
class SharedBatch:
    """Rows of packed prompt trees: a prefix, then the branches that continue it.

    A row holds one or more trees side by side (left-padded), so short trees fill
    the room a long one leaves: padding costs as much compute as real tokens.
    """

    input_ids: torch.Tensor  # [rows, seq]
    trees: torch.Tensor  # [rows, seq] long: which tree of the row, HEADER, -1 on padding
    segments: torch.Tensor  # [rows, seq] long: 0 the tree's prefix, k its branch k
    position_ids: torch.Tensor  # [rows, seq], each tree from 0, each branch after its prefix
    placeholder_mask: torch.Tensor  # [rows, seq] bool
    label_mask: torch.Tensor  # [rows, seq] bool, answer tokens
    branch_index: torch.Tensor  # [rows, seq] long: the branch's number in the batch, or -1
    n_branches: int
    """Branches (prompts) in the batch."""
    n_example_tokens: int
    """Tokens of the prompts as if each ran alone (the unshared layout)."""

    def to(self, device: torch.device | str) -> SharedBatch:
        moved = {k: v.to(device) if torch.is_tensor(v) else v for k, v in vars(self).items()}
        return SharedBatch(**moved)

    def layout(self, dtype: torch.dtype) -> RowLayout:
        """Each branch sees its prefix and itself (an additive mask in ``dtype``), its
        positions continuing the prefix's; each answer token belongs to its branch."""
        return RowLayout(
            branch_attention_mask(self.trees, self.segments, dtype),
            self.position_ids,
            self.branch_index[self.label_mask],  # [n_answer_tokens], each token's branch
            self.n_branches,
        )

    @property
    def n_tokens(self) -> int:
        """Tokens the decoder computes: each row's header and each prefix once, plus
        every branch."""
        return int((self.trees != PADDING).sum())


def pack_first_fit(lengths: list[int], width: int) -> list[list[int]]:
    """First-fit decreasing: item indices per row, no row longer than ``width``."""
    rows: list[list[int]] = []
    room: list[int] = []
    for tree in sorted(range(len(lengths)), key=lambda t: -lengths[t]):
        row = next((r for r, free in enumerate(room) if free >= lengths[tree]), None)
        if row is None:
            rows.append([])
            room.append(width)
            row = len(rows) - 1
        rows[row].append(tree)
        room[row] -= lengths[tree]
    return rows


@dataclass
class _Tree:
    """A prefix and the branches that continue it, before packing into rows."""

    prefix: list[int]
    read: int | None
    """The read whose placeholders end the prefix; ``None``: each branch opens with its own."""
    branches: list[tuple[list[int], list[bool], int, int | None]] = field(default_factory=list)
    """Each branch's ids, answer mask, number in the batch and read (``None``: none)."""

    @property
    def length(self) -> int:
        return len(self.prefix) + sum(len(ids) for ids, _, _, _ in self.branches)


def shared_decoder_batch(
    tokenizer: PreTrainedTokenizerBase,
    vectors: Sequence[torch.Tensor],
    groups: Sequence[Sequence[tuple[str, str | None]]],
    row_tokens: int = ROW_TOKENS,
    *,
    order: str = "vectors-first",
) -> tuple[SharedBatch, torch.Tensor]:
    """Lay out the prompts of each read as trees: a shared prefix, then one branch per
    QA pair (one tree per read in the ``vectors-first`` order).

    Args:
        tokenizer: The decoder's tokenizer.
        vectors: ``[n_i, d_model]`` activations of each prefix.
        groups: For each prefix, the (question, answer) pairs that read it; ``None``
            answers lay out the generation prompt only.
        row_tokens: Pack trees into rows of up to this many tokens (or the longest
            tree): fewer, fuller rows waste less compute on padding, while attention
            grows with the square of a row's length.
        order: The decoder's prompt order (see :func:`build_decoder_prompt`).

    Returns:
        The batch (branches numbered in group order) and the vectors concatenated in
        placeholder order ``[total_placeholders, d_model]`` (row by row, as patched).
    """
    if len(vectors) != len(groups) or any(not group for group in groups):
        raise LatentQAError("every read needs at least one question")
    trees: list[_Tree] = []
    number = 0  # branches are numbered in group order, whichever tree they join
    for read_index, (read, group) in enumerate(zip(vectors, groups, strict=True)):
        # Prompts that agree up to their last placeholder share a tree (vectors-first:
        # all of them, their header is rendered without the question).
        shared: dict[tuple[int, ...], _Tree] = {}
        for question, answer in group:
            p = build_decoder_prompt(tokenizer, len(read), question, answer, order=order)
            prefix = tuple(p.input_ids[: p.placeholder_end])
            if prefix not in shared:
                shared[prefix] = _Tree(list(prefix), read_index)
                trees.append(shared[prefix])
            cut = p.placeholder_end
            shared[prefix].branches.append((p.input_ids[cut:], p.label_mask[cut:], number, None))
            number += 1
    return _pack(tokenizer, trees, vectors, number, row_tokens)


def question_shared_batch(
    tokenizer: PreTrainedTokenizerBase,
    vectors: Sequence[torch.Tensor],
    examples: Sequence[tuple[int, str, str | None]],
    max_branches: int,
    row_tokens: int = ROW_TOKENS,
) -> tuple[SharedBatch, torch.Tensor]:
    """Question-first prompts that ask the same question share it, whatever they read.

    In the ``question-first`` order a prompt up to its first placeholder is the header and
    the question: the same for a yes/no pair (one candidate asked of two reads) or for
    examples of one question about different dialogs. Each tree is that question once,
    then up to ``max_branches`` branches, each its own read's placeholders, the rest of
    the prompt and the answer. Same losses and gradients as the prompts run alone.

    Args:
        tokenizer: The decoder's tokenizer.
        vectors: ``[n_i, d_model]`` activations of each read.
        examples: ``(read index, question, answer)`` per prompt; branches are numbered in
            this order.
        max_branches: Most branches per tree (a tree's attention grows with the square of
            its length).
        row_tokens: See :func:`shared_decoder_batch`.

    Returns:
        The batch and the vectors in placeholder order ``[total_placeholders, d_model]``.
    """
    if not examples or max_branches < 1:
        raise LatentQAError("a question-shared batch needs examples and max_branches >= 1")
    trees: list[_Tree] = []
    open_tree: dict[tuple[int, ...], _Tree] = {}
    for number, (read, question, answer) in enumerate(examples):
        p = build_decoder_prompt(
            tokenizer, len(vectors[read]), question, answer, order="question-first"
        )
        prefix = tuple(p.input_ids[: p.placeholder_start])
        tree = open_tree.get(prefix)
        if tree is None or len(tree.branches) >= max_branches:
            tree = open_tree[prefix] = _Tree(list(prefix), None)
            trees.append(tree)
        cut = p.placeholder_start
        tree.branches.append((p.input_ids[cut:], p.label_mask[cut:], number, read))
    return _pack(tokenizer, trees, vectors, len(examples), row_tokens)


def _pack(
    tokenizer: PreTrainedTokenizerBase,
    trees: list[_Tree],
    vectors: Sequence[torch.Tensor],
    n_branches: int,
    row_tokens: int,
) -> tuple[SharedBatch, torch.Tensor]:
    """Pack trees into left-padded rows, each opening with the header the trees share;
    the vectors in placeholder (row-major) order."""
    n_example_tokens = sum(
        len(tree.prefix) * len(tree.branches) + tree.length - len(tree.prefix) for tree in trees
    )
    header = _common_header(trees, vectors)
    h = len(header)
    lengths = [tree.length - h for tree in trees]
    rows = pack_first_fit(lengths, max(max(lengths), row_tokens - h))
    shape = (len(rows), h + max(sum(lengths[t] for t in row) for row in rows))
    input_ids = torch.full(shape, pad_token_id(tokenizer), dtype=torch.long)
    tree_ids = torch.full(shape, PADDING, dtype=torch.long)
    segments = torch.zeros(shape, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    placeholder_mask = torch.zeros(shape, dtype=torch.bool)
    label_mask = torch.zeros(shape, dtype=torch.bool)
    branch_index = torch.full(shape, -1, dtype=torch.long)
    placed: list[torch.Tensor] = []  # vectors in placeholder (row-major) order
    for row, members in enumerate(rows):
        at = shape[1] - h - sum(lengths[t] for t in members)  # left padding
        if h:
            input_ids[row, at : at + h] = torch.tensor(header)
            tree_ids[row, at : at + h] = HEADER
            position_ids[row, at : at + h] = torch.arange(h)
            at += h
        for slot, t in enumerate(members):
            tree = trees[t]
            n_prefix = len(tree.prefix)
            span = slice(at, at + n_prefix - h)
            input_ids[row, span] = torch.tensor(tree.prefix[h:])
            tree_ids[row, span] = slot
            position_ids[row, span] = torch.arange(h, n_prefix)
            if tree.read is not None:  # the read's placeholders end the prefix
                placeholder_mask[row, span.stop - len(vectors[tree.read]) : span.stop] = True
                placed.append(vectors[tree.read])
            at += n_prefix - h
            for k, (ids, labels, number, read) in enumerate(tree.branches, start=1):
                span = slice(at, at + len(ids))
                input_ids[row, span] = torch.tensor(ids)
                tree_ids[row, span] = slot
                segments[row, span] = k
                position_ids[row, span] = torch.arange(n_prefix, n_prefix + len(ids))
                label_mask[row, span] = torch.tensor(labels, dtype=torch.bool)
                branch_index[row, span] = number
                if read is not None:  # the read's placeholders open the branch
                    placeholder_mask[row, at : at + len(vectors[read])] = True
                    placed.append(vectors[read])
                at += len(ids)
    batch = SharedBatch(
        input_ids,
        tree_ids,
        segments,
        position_ids,
        placeholder_mask,
        label_mask,
        branch_index,
        n_branches,
        n_example_tokens,
    )
    return batch, torch.cat(placed)


def _common_header(trees: Sequence[_Tree], vectors: Sequence[torch.Tensor]) -> list[int]:
    """The longest run of ids every tree's prefix opens with, before any placeholder."""
    ends = [
        len(t.prefix) - (len(vectors[t.read]) if t.read is not None else 0) for t in trees
    ]  # each prefix's placeholders, if any, end it
    first = trees[0].prefix
    h = min(ends)
    for tree in trees[1:]:
        h = next((k for k in range(h) if tree.prefix[k] != first[k]), h)
    return first[:h]


def branch_attention_mask(trees: torch.Tensor, segments: torch.Tensor, dtype: torch.dtype):
    """Additive mask ``[rows, 1, seq, seq]``: causal within a tree, where a branch sees
    its prefix and itself only, and every token of a row sees the row's header. Padding
    sees itself, so no softmax row is empty."""
    width = trees.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=trees.device).tril()
    same_tree = (trees[:, :, None] == trees[:, None, :]) & (trees[:, None, :] != PADDING)
    key, query = segments[:, None, :], segments[:, :, None]  # [rows, 1, seq], [rows, seq, 1]
    header = (trees[:, None, :] == HEADER) & (trees[:, :, None] != PADDING)  # [rows, seq, seq]
    allowed = causal & ((same_tree & ((key == 0) | (key == query))) | header)  # [rows, seq, seq]
    allowed |= torch.eye(width, dtype=torch.bool, device=trees.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=trees.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min).unsqueeze(1)


@contextmanager
def cpu_attention(device: torch.device) -> Iterator[None]:
    """Use the math kernel for attention on a CPU, torch's default choice elsewhere.

    The decoder's sequences are short (about 100 tokens); there the CPU flash kernel's
    backward costs about 20% of a training step, the math kernel's much less (a
    training step 12% faster, measured in docs/performance.md).
    """
    if device.type != "cpu":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        yield
