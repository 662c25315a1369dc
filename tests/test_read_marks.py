"""Read marks (issue #23): thresholds tuned for precision, 2-fold by label, and the probe's
features and extra data. No model: plain numbers and the shipped data files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from latentqa.errors import LatentQAError
from latentqa.evals.system_prompt_items import (
    SHIPPED_DATA,
    SHIPPED_REPLIES,
    build_items,
    reply_key,
    with_replies,
)
from latentqa.evals.system_prompt_marks import (
    MIN_MARKED,
    TARGET_PRECISION,
    choose_threshold,
    margin_gaps,
    pick_evidence,
    read_marks,
)
from latentqa.evals.system_prompt_probe import (
    cached_features,
    extra_folders,
    extra_pairs,
    probe_features,
    span_features,
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(-5, 5, allow_nan=False, width=32), st.booleans()),
        min_size=1,
        max_size=40,
    )
)
def test_a_chosen_threshold_marks_enough_items_at_the_target_precision(rows):
    evidence, right = [e for e, _ in rows], [r for _, r in rows]
    cut = choose_threshold(evidence, right)
    marked = [r for e, r in rows if e > cut]
    if cut == float("inf"):
        assert not marked
        return
    assert len(marked) >= MIN_MARKED
    assert sum(marked) / len(marked) >= TARGET_PRECISION
    # The smallest such threshold: every lower one marks a set that breaks a rule.
    for lower in {e for e in evidence} | {min(evidence) - 1.0}:
        if lower >= cut:
            continue
        more = [r for e, r in rows if e > lower]
        assert len(more) < MIN_MARKED or sum(more) / len(more) < TARGET_PRECISION


def test_separable_evidence_marks_exactly_the_right_items():
    evidence = [3.0, 2.5, 2.0, 0.1, -0.2, -1.0]
    right = [True, True, True, False, False, False]  # a 4th mark: precision 0.75 < 0.8
    cut = choose_threshold(evidence, right)
    assert [e > cut for e in evidence] == right


class _Item:
    def __init__(self, label: str, gold_index: int) -> None:
        self.label, self.gold_index = label, gold_index
        self.question, self.options = "Q?", [f"{label} a", f"{label} b", "c", "d", "e"]


def test_read_marks_are_two_fold_by_label_and_precise_when_evidence_tracks_truth():
    items = [_Item(f"label-{k % 10}", k % 2) for k in range(40)]
    picks = [0] * len(items)  # right for even k
    evidence = [1.0 + 0.01 * k if k % 2 == 0 else -1.0 for k in range(len(items))]
    marks = read_marks(picks, evidence, items, seed=0)
    assert marks["read_mark_precision"] == 1.0
    assert marks["read_mark_coverage"] == pytest.approx(0.5)
    assert marks["read_mark_threshold"] is not None and marks["read_mark_threshold"] >= -1.0
    # Evidence that says nothing: nothing reaches the target precision, nothing is marked.
    flat = read_marks([1] * len(items), [0.0] * len(items), items, seed=0)
    assert flat["read_mark_precision"] is None and flat["read_mark_coverage"] == 0.0
    assert flat["read_mark_threshold"] is None


def test_pick_evidence_subtracts_each_picked_option_mean_reference_score():
    items = [_Item("x", 0), _Item("y", 1)]
    options = [[0.5, -1.0, -2.0, -2.0, -2.0], [-3.0, -0.5, -2.0, -2.0, -2.0]]
    asked = []

    def reference_means(pairs):
        asked.append(list(pairs))
        return {pair: -1.5 for pair in pairs}  # e.g. -1 on one reference read, -2 on another

    picks, evidence = pick_evidence(reference_means, options, items)
    assert picks == [0, 1]
    assert evidence == pytest.approx([0.5 + 1.5, -0.5 + 1.5])
    # one call, for the picked answers only
    assert asked == [[("Q?", "x a"), ("Q?", "y b")]]


def test_span_features_concatenate_each_layers_mean():
    spans = [torch.arange(24.0).reshape(2, 3, 4), torch.ones(2, 5, 4)]
    features = span_features(spans)
    assert features.shape == (2, 8)
    torch.testing.assert_close(features[0], spans[0].mean(1).flatten())


def test_probe_extra_data_leaves_out_held_out_lookalikes_and_is_capped(tmp_path):
    folder = tmp_path / "release"
    folder.mkdir()
    rows = [
        {"label": "persona-tone-terrified", "system": "Be terrified.", "stimulus_user": "Hi"},
        {"label": "persona-chef", "system": "You are a chef.", "stimulus_user": "Hi"},
        {"label": "goal-sell-tea", "system": "Sell tea.", "stimulus_user": "Hello"},
    ]
    (folder / "system.json").write_text(json.dumps(rows))
    pairs = extra_pairs([folder], ["tone-terrified"], max_dialogs=10, seed=0)
    assert sorted(text for _, text in pairs) == ["Sell tea.", "You are a chef."]
    assert all(dialog[0]["role"] == "system" for dialog, _ in pairs)
    assert len(extra_pairs([folder], ["tone-terrified"], max_dialogs=1, seed=0)) == 1


def test_probe_extra_data_keeps_the_items_form_user_turn_or_with_reply(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    rows = [
        {"label": "persona-chef", "system": "You are a chef.", "stimulus_user": "Hi"},
        {"label": "goal-sell-tea", "system": "Sell tea.", "stimulus_user": "Hello",
         "stimulus_model": "Have some tea."},
    ]  # fmt: skip
    (folder / "system.json").write_text(json.dumps(rows))
    user = extra_pairs([folder], [], max_dialogs=10, seed=0, ends_with="user")
    reply = extra_pairs([folder], [], max_dialogs=10, seed=0, ends_with="assistant")
    assert [text for _, text in user] == ["You are a chef."]
    assert [text for _, text in reply] == ["Sell tea."]
    assert reply[0][0][-1] == {"role": "assistant", "content": "Have some tea."}
    assert len(extra_pairs([folder], [], max_dialogs=10, seed=0)) == 2


def test_set_b_appends_the_shipped_reply_to_every_held_out_dialog():
    items, _ = build_items(None)
    replies = json.loads(SHIPPED_REPLIES.read_text())
    assert SHIPPED_REPLIES.parent == SHIPPED_DATA
    b = with_replies(items, replies)
    assert len(b) == len(items) == 177
    for a_item, b_item in zip(items, b, strict=True):
        assert b_item.dialog[:-1] == a_item.dialog and b_item.reply
        assert b_item.dialog[-1] == {"role": "assistant", "content": b_item.reply}
        assert [m["role"] for m in b_item.user_dialog] == ["user", "assistant"]
        assert (b_item.gold, b_item.options) == (a_item.gold, a_item.options)
    with pytest.raises(LatentQAError, match="no reply"):
        with_replies(items, {reply_key(items[0].dialog): "ok"})


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.lists(st.floats(-9, 9, allow_nan=False, width=32), min_size=2, max_size=6),
        min_size=1,
        max_size=12,
    )
)
def test_a_margin_gap_is_the_picks_lead_over_the_runner_up(rows):
    picks, gaps = margin_gaps(rows)
    for row, pick, gap in zip(rows, picks, gaps, strict=True):
        assert row[pick] == max(row)
        assert gap == row[pick] - sorted(row)[-2] and gap >= 0


def test_probe_features_are_read_once_and_found_again(tmp_path):
    calls: list[int] = []

    def read_spans(dialogs):
        calls.append(len(dialogs))
        return [torch.full((2, 3, 4), float(len(d[0]["content"]))) for d in dialogs]

    dialogs = [[{"role": "user", "content": "hi" * k}] for k in range(1, 4)]
    first = cached_features(read_spans, dialogs, "tag", tmp_path)
    assert calls == [3] and first.shape == (3, 8)
    again = cached_features(read_spans, dialogs, "tag", tmp_path)
    assert calls == [3] and torch.equal(again, first)  # from disk, bit for bit
    assert [p.suffix for p in tmp_path.iterdir()] == [".safetensors"]  # no partial file
    (kept,) = tmp_path.iterdir()
    first_size = kept.stat().st_size
    cached_features(read_spans, dialogs, "other weights", tmp_path)
    cached_features(read_spans, dialogs[:2], "tag", tmp_path)
    assert calls == [3, 3, 2]  # another key or other dialogs: read afresh
    assert torch.equal(cached_features(read_spans, dialogs, "tag", None), first)
    assert calls == [3, 3, 2, 3]  # no folder: never cached
    # A damaged file is read afresh and replaced.
    kept.write_bytes(b"not safetensors")
    assert torch.equal(cached_features(read_spans, dialogs, "tag", tmp_path), first)
    assert calls[-1] == 3 and len(calls) == 5 and kept.stat().st_size == first_size
    assert torch.equal(cached_features(read_spans, dialogs, "tag", tmp_path), first)
    assert len(calls) == 5
    # Without a target name the probe never caches; the items' features key it otherwise.
    spans = read_spans(dialogs)
    unnamed = probe_features("", [1, 2], read_spans, spans)
    unnamed(dialogs)
    assert calls[-1] == 3 and len(calls) == 7


def test_the_probe_finds_the_decoders_extra_data_from_any_folder(tmp_path, monkeypatch):
    from types import SimpleNamespace

    release = tmp_path / "runs" / "release"
    release.mkdir(parents=True)
    given = ["release", "gone"]  # relative to the folder the decoder was trained in
    absolute = [str(release), str(tmp_path / "gone")]
    spec = SimpleNamespace(train_config={"extra_data": given}, extra={"extra_data_paths": absolute})
    reader = SimpleNamespace(spec=spec)
    logged: list[str] = []
    monkeypatch.chdir(tmp_path)  # not the training folder: found by its absolute path
    assert extra_folders(reader, None, logged.append) == [release]
    assert "gone" in logged[0] and "--probe-data" in logged[0]
    monkeypatch.chdir(tmp_path / "runs")  # the training folder: found as given
    assert extra_folders(reader, None, logged.append) == [Path("release")]
    older = SimpleNamespace(spec=SimpleNamespace(train_config={"extra_data": given}, extra={}))
    monkeypatch.chdir(tmp_path)  # a decoder saved before the absolute paths: as given
    assert extra_folders(older, None, logged.append) == []
    assert extra_folders(reader, ["named"], logged.append) == [Path("named")]
