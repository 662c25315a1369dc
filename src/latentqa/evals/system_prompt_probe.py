"""The ``linear_probe`` method of ``latentqa eval system-prompt``: the bar a decoder must beat.

A ridge map from the read activations to the sentence embedding of what was hidden,
built to be as strong as a probe here can be (issue #23): one mean vector per read
layer of the decoder (not one mean over everything), concatenated and standardized,
fit on the evaluation's own training behaviours (their answers to the question) plus
the system prompts of every extra ``system`` dataset the decoder was trained on
(``train_config.extra_data`` in its ``latentqa.json``) or that the caller names. The
probe answers multiple choice with the option nearest its prediction, and a yes/no
question with yes when the candidate is nearer than the mean of the item's options.

``linear_probe_contrast`` is the same probe on each dialog's features minus those of
the same dialog without its system prompt (the turn's own content cancels, and what the
hidden prompt adds is left): on set A, fit on the 699 built-in dialogs plus 3,000
release prompts in ordinary user turns, 0.904 against 0.785 (docs/decoder-experiments.md).
It reads each dialog twice.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from latentqa.data.format import load_latentqa
from latentqa.evals.embed import embedder
from latentqa.evals.probe import RidgeProbe
from latentqa.evals.system_prompt_items import Dialog, Item, without_system
from latentqa.train.prepare import drop_heldout_lookalikes

Log = Callable[[str], None]

DEFAULT_MAX_EXTRA = 3000
"""Extra training dialogs read at most (a seeded sample): about a minute of reads on 2
cores in bfloat16, and the probe's accuracy has flattened by then (docs/method.md)."""


def span_features(spans: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per dialog, the mean over its read tokens of each read layer, layers concatenated:
    ``[n_layers, span, d_model]`` each -> ``[n_dialogs, n_layers * d_model]``."""
    return torch.stack([span.float().mean(1).flatten().cpu() for span in spans])


def extra_folders(reader, named: Sequence[str] | None, log: Log) -> list[Path]:
    """The extra datasets the probe trains on: ``named``, else the decoder's own extra
    training data where those folders exist on this machine."""
    if named is not None:
        return [Path(folder) for folder in named]
    spec = getattr(reader, "spec", None)
    recorded = getattr(spec, "train_config", {}) or {}
    folders = [Path(f) for f in recorded.get("extra_data") or []]
    # Relative paths name folders beside the training run: its absolute ones find them
    # from any folder of the machine that trained it.
    absolute = (getattr(spec, "extra", {}) or {}).get("extra_data_paths") or []
    if len(absolute) == len(folders):
        folders = [f if f.is_dir() else Path(a) for f, a in zip(folders, absolute, strict=True)]
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        log(
            f"linear_probe: the decoder's extra training data {missing} is not on this "
            "machine; pass --probe-data to train the probe on it"
        )
    return [f for f in folders if f.is_dir()]


def extra_pairs(
    folders: Sequence[Path],
    heldout_labels: Sequence[str],
    max_dialogs: int,
    seed: int,
    ends_with: str | None = None,
) -> list[tuple[Dialog, str]]:
    """``(dialog, hidden system prompt)`` of each ``system`` behaviour in ``folders``,
    leaving out labels that look like a held-out one; a seeded sample of ``max_dialogs``.

    ``ends_with`` (a role: ``"user"`` for set A, ``"assistant"`` for set B) keeps only
    dialogs of the items' form: a mean over a span that holds a reply is another feature
    than a mean over the user turn alone, and mixing the two weakens the probe (set A:
    MC 0.678 with the decoder's reply data mixed in, 0.706 without; decoder-experiments).
    """
    pairs: list[tuple[Dialog, str]] = []
    for folder in folders:
        dataset = load_latentqa(folder, ["system"], require_qa=False)
        kept, _ = drop_heldout_lookalikes(dataset, list(heldout_labels))
        held = set(heldout_labels)
        pairs += [(b.dialog(), b.system) for b in kept.behaviors if b.label not in held]
    if ends_with is not None:
        pairs = [(dialog, text) for dialog, text in pairs if dialog[-1]["role"] == ends_with]
    if len(pairs) > max_dialogs:
        pairs = random.Random(f"probe-extra:{seed}").sample(pairs, max_dialogs)
    return pairs


WIDE_LAMBDAS = (1.0, 10.0, 100.0, 1000.0, 3000.0, 10000.0)
"""Ridge penalties tried: a few thousand features want more than the default range."""


def cached_features(
    read_spans: Callable[[list[Dialog]], list[torch.Tensor]],
    dialogs: list[Dialog],
    tag: str,
    folder: Path | None,
) -> torch.Tensor:
    """:func:`span_features` of ``dialogs``, kept in ``folder`` between runs.

    The probe's training dialogs are thousands of frozen-target reads that no decoder
    changes, so an evaluation that is run again (another decoder, another option) finds
    them on disk. The file's name hashes ``tag`` and the dialogs; the caller puts in
    ``tag`` whatever else decides the reads (the target, its layers, and the items' own
    features, which change with the weights or the dtype). Written atomically.
    """
    import hashlib
    import json
    import os

    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    if folder is None:
        return span_features(read_spans(dialogs))
    digest = hashlib.sha256(json.dumps([tag, dialogs], sort_keys=True).encode()).hexdigest()
    path = folder / f"{digest[:32]}.safetensors"
    if path.is_file():
        try:  # a damaged or foreign file is read afresh and replaced, never trusted
            kept = load_file(str(path))["features"]
            if kept.shape[0] == len(dialogs):
                return kept
        except (SafetensorError, KeyError, OSError):
            pass
    features = span_features(read_spans(dialogs))
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    save_file({"features": features.contiguous()}, str(partial))
    os.replace(partial, path)
    return features


def probe_features(
    target: str,
    layers: Sequence[int],
    read_spans: Callable[[list[Dialog]], list[torch.Tensor]],
    item_spans: Sequence[torch.Tensor],
) -> Callable[[list[Dialog]], torch.Tensor]:
    """The probe's features of dialogs, cached under ``$LATENTQA_CACHE/probe-features``
    for a named target (:func:`cached_features`), computed afresh otherwise.

    The key holds the target, the read layers and a hash of the items' own features
    (read this run), so other weights or another dtype never reuse a stale file.
    """
    import hashlib

    from latentqa.gguf_cache import cache_root

    if not target:
        return lambda dialogs: span_features(read_spans(dialogs))
    mine = span_features(item_spans).numpy().tobytes()
    tag = f"{target}|{list(layers)}|{hashlib.sha256(mine).hexdigest()}"
    folder = cache_root() / "probe-features"
    return lambda dialogs: cached_features(read_spans, dialogs, tag, folder)


def contrast_of(
    features_of: Callable[[list[Dialog]], torch.Tensor],
) -> Callable[[list[Dialog]], torch.Tensor]:
    """``features_of`` minus the features of the same dialogs without their system
    prompt: what the hidden prompt adds to the read."""
    return lambda dialogs: features_of(dialogs) - features_of([without_system(d) for d in dialogs])


def probe_method(
    reader,
    reads,
    items: Sequence[Item],
    train_pairs: Sequence[tuple[Dialog, str]],
    seed: int,
    log: Log,
    probe_data: Sequence[str] | None = None,
    max_extra: int = DEFAULT_MAX_EXTRA,
    contrast: bool = False,
) -> dict[str, float]:
    """``linear_probe`` (``contrast=True``: ``linear_probe_contrast``) of
    :func:`~latentqa.evals.system_prompt.evaluate_system_prompt`, from its reads
    (:class:`~latentqa.evals.system_prompt_scoring.ConditionReads`: the items' spans are
    read once for every method); ``probe_data`` and ``max_extra`` as there.
    """
    reads("real")  # the items' raw spans
    folders = extra_folders(reader, probe_data, log)
    labels, form = [i.label for i in items], items[0].dialog[-1]["role"]
    extra = extra_pairs(folders, labels, max_extra, seed, ends_with=form) if folders else []
    target = getattr(reader, "target_name", "")
    features_of = probe_features(target, reads.layers, reads.raw, reads.spans)
    mine = span_features(reads.spans)  # [n_items, n_layers * d_model]
    if contrast:
        features_of = contrast_of(features_of)
        mine = mine - span_features(reads.raw([i.user_dialog for i in items]))
    return run_probe(features_of, mine, items, train_pairs, extra, seed, log)


def run_probe(
    features_of: Callable[[list[Dialog]], torch.Tensor],
    item_features: torch.Tensor,
    items: Sequence[Item],
    train_pairs: Sequence[tuple[Dialog, str]],
    extra: Sequence[tuple[Dialog, str]],
    seed: int,
    log: Log,
) -> dict[str, float]:
    """Fit the probe on ``train_pairs`` + ``extra`` and score it on the items.

    Args:
        features_of: :func:`span_features` of dialogs at the decoder's read layers
            (e.g. through :func:`cached_features`).
        item_features: The items' features ``[n_items, n_layers * d_model]``
            (:func:`span_features` of the reads the decoder methods use).
        items: The held-out items.
        train_pairs: ``(dialog, answer)`` of the evaluation's training behaviours.
        extra: ``(dialog, system prompt)`` of extra training behaviours.
        seed: Seed of the ridge's validation split.
        log: Progress messages.

    Returns:
        ``{"mc_accuracy", "yes_no_accuracy"}``, or ``{}`` with fewer than 2 dialogs.
    """
    pairs = [*train_pairs, *extra]
    if len(pairs) < 2:
        log("linear_probe: fewer than 2 training dialogs answer the question; not fitted")
        return {}
    log(
        f"linear_probe: {len(train_pairs)} training dialogs + {len(extra)} extra, "
        f"{item_features.shape[1]} features"
    )
    features = features_of([dialog for dialog, _ in pairs])
    model = embedder()
    targets = model.embed([text for _, text in pairs])
    probe = RidgeProbe.fit(features, targets, seed, lambdas=WIDE_LAMBDAS)
    log(f"linear_probe: ridge penalty {probe.lam:g}")
    predicted = torch.nn.functional.normalize(probe.predict(item_features), dim=-1)
    scores, right = [], 0
    for p, item in zip(predicted, items, strict=True):
        option_cos = model.embed(item.options) @ p
        scores.append(option_cos.tolist())
        distractor_cos = float(model.embed([item.distractor])[0] @ p)
        mean = float(option_cos.mean())
        right += (float(option_cos[item.gold_index]) > mean) + (distractor_cos <= mean)
    picks = [max(range(len(s)), key=s.__getitem__) for s in scores]
    mc = sum(p == item.gold_index for p, item in zip(picks, items, strict=True)) / len(items)
    return {"mc_accuracy": mc, "yes_no_accuracy": right / (2 * len(items))}
