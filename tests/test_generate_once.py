"""``generate_ids_once``: rows that cannot differ (all-zero reads of one shape and dtype,
asked the same question) are generated once; every row gets what it would alone."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from latentqa.answering import generate_ids_once

QUESTIONS = ("What is it?", "Who is it?")


def _fake_generate(calls: list[int]):
    """A deterministic generator: a row's ids depend on its vectors and question only."""

    def generate(vectors, questions, max_new_tokens, batch_size=32):
        calls.append(len(vectors))
        return [
            [len(v), int(v.sum().round()), QUESTIONS.index(q), max_new_tokens]
            for v, q in zip(vectors, questions, strict=True)
        ]

    return generate


rows = st.lists(
    st.tuples(st.integers(1, 3), st.booleans(), st.sampled_from(QUESTIONS), st.integers(1, 5)),
    min_size=1,
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(rows)
def test_every_row_gets_its_own_answer_and_zero_rows_run_once(spec):
    vectors = [
        torch.zeros(n, 4) if zero else torch.full((n, 4), float(fill)) for n, zero, _, fill in spec
    ]
    questions = [q for _, _, q, _ in spec]
    calls: list[int] = []
    got = generate_ids_once(_fake_generate(calls), vectors, questions, 7, batch_size=2)
    alone = _fake_generate([])(vectors, questions, 7)
    assert got == alone
    zero_keys = {(n, q) for n, zero, q, _ in spec if zero}
    assert calls == [sum(not zero for _, zero, _, _ in spec) + len(zero_keys)]


def test_zeros_of_another_dtype_are_another_prompt():
    """Zeros of another dtype are another prompt: generated apart."""
    vectors = [torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.float64), torch.zeros(2, 4)]
    calls: list[int] = []
    generate_ids_once(_fake_generate(calls), vectors, [QUESTIONS[0]] * 3, 3)
    assert calls == [2]
