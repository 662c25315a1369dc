"""The training order: every example once per epoch, a dialog's examples shared in units."""

from hypothesis import given, settings
from hypothesis import strategies as st

from latentqa.schedule import epoch_permutation, example_order

examples = st.integers(1, 60).flatmap(
    lambda n: st.tuples(
        st.just(n),
        st.lists(st.integers(0, 9), min_size=n, max_size=n),  # each example's dialog
        st.lists(st.integers(1, 50), min_size=n, max_size=n),  # each example's length
    )
)


@settings(max_examples=60, deadline=None)
@given(data=examples, share=st.integers(1, 5), group=st.integers(1, 8), seed=st.integers(0, 99))
def test_each_epoch_is_a_permutation_and_a_pure_function(data, share, group, seed):
    n, dialogs, lengths = data
    for with_lengths in (None, lengths):
        order = epoch_permutation(n, seed, 3, with_lengths, group, dialogs, share)
        assert sorted(order) == list(range(n))
        assert order == epoch_permutation(n, seed, 3, with_lengths, group, dialogs, share)


@settings(max_examples=60, deadline=None)
@given(data=examples, share=st.integers(2, 5), seed=st.integers(0, 99))
def test_a_dialog_examples_come_in_units_of_up_to_share(data, share, seed):
    n, dialogs, _ = data
    order = epoch_permutation(n, seed, 0, None, 1, dialogs, share)
    # Cut the order into runs of one dialog: every dialog with k examples fills
    # ceil(k / share) units, so its examples sit side by side at least share at a time.
    runs: list[list[int]] = []
    for i in order:
        if runs and dialogs[runs[-1][0]] == dialogs[i]:
            runs[-1].append(i)
        else:
            runs.append([i])
    for dialog in set(dialogs):
        count = dialogs.count(dialog)
        sizes = [len(run) for run in runs if dialogs[run[0]] == dialog]
        assert sum(sizes) == count
        assert len(sizes) <= -(-count // share)  # at most ceil(count / share) runs


def test_without_sharing_the_order_is_unchanged():
    # Runs from before shares existed resume with the same batches.
    dialogs = [i // 3 for i in range(30)]
    lengths = [(7 * i) % 11 + 1 for i in range(30)]
    assert epoch_permutation(30, 5, 1, lengths, 4, dialogs, 1) == epoch_permutation(
        30, 5, 1, lengths, 4
    )
    positions = range(25, 65)  # across an epoch boundary
    assert example_order(30, 5, positions, lengths, 4, dialogs, 1) == example_order(
        30, 5, positions, lengths, 4
    )
