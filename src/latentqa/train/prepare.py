"""Turn a :class:`TrainConfig` into models, examples and evaluation items."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from latentqa.chat import EncodedDialog, encode_dialog, subject_span
from latentqa.data.format import LatentQADataset, load_latentqa
from latentqa.decoder.contrast import has_system, without_system
from latentqa.decoder.folder import pool_width
from latentqa.decoder.inputs import fit_standardizer
from latentqa.errors import LatentQAError
from latentqa.layers import check_layer_index, find_decoder_layers, linear_module_names
from latentqa.questions import RECONSTRUCT_QUESTION
from latentqa.train.activations import ActivationSource
from latentqa.train.config import TrainConfig
from latentqa.train.evaluate import EvalItem
from latentqa.train.tasks import (
    Fact,
    TaskExample,
    TaskSampler,
    derived_qa,
    masked_text,
    parse_task_mix,
)
from latentqa.typed_config import config_to_dict

# Options whose change makes a checkpoint meaningless to resume from.
_FINGERPRINT_KEYS = (
    "data",
    "target",
    "kinds",
    "read_layers",
    "write_layer",
    "mode",
    "max_read_tokens",
    "lora_r",
    "lora_alpha",
    "lora_targets",
    "lora_layers",
    "batch_size",
    "grad_accum",
    "seed",
    "max_examples",
    "extra_data",
    "task_mix",
    "task_examples",
    "read_pool",
    "standardize",
)
_LATER_KEYS = (
    "projector",
    "projector_warmup_steps",
    "verbalize_steps",
    "projector_init",
    "projector_alpha",
    "projector_fit_dialogs",
    "prompt_order",
    "lora_from",
    "init_from",
    "read_contrast",
)
"""Options added later that also make a checkpoint meaningless: keyed only when set, so
runs from before them keep their fingerprint."""


def data_folders(config: TrainConfig) -> tuple[Path, Path | None]:
    """Training folder and held-out folder (``train/`` and ``heldout/`` when present)."""
    root = Path(config.data)
    if not root.exists():
        raise LatentQAError(
            f"data folder {root} does not exist; build one with `latentqa data build`"
        )
    train = root / "train" if (root / "train").is_dir() else root
    if config.eval_data is not None:
        return train, Path(config.eval_data)
    heldout = root / "heldout"
    return train, heldout if heldout.is_dir() else None


def config_fingerprint(config: TrainConfig) -> str:
    values = config_to_dict(config)
    subset = {key: values[key] for key in _FINGERPRINT_KEYS}
    if config.share_reads != 1:  # batches differ; runs from before the option keep theirs
        subset["share_reads"] = config.share_reads
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    subset.update({key: values[key] for key in _LATER_KEYS if values[key] != defaults[key]})
    return hashlib.sha256(json.dumps(subset, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class PreparedData:
    """Encoded dialogs and the examples / evaluation items that refer to them."""

    dialogs: list[EncodedDialog]
    """Every distinct dialog, training ones first."""
    train: list[tuple[int, str, str]]
    """Training examples: (dialog index, question, answer)."""
    eval_items: list[EvalItem]
    """Fixed held-out sample."""
    n_train_labels: int
    n_eval_labels: int
    task_counts: dict[str, int] = field(default_factory=dict)
    """Training examples per task (see :mod:`latentqa.train.tasks`)."""
    n_dropped_lookalikes: int = 0
    """Extra-data labels left out because they name a held-out behaviour."""
    reads: str = "dialog"
    """``reply`` when every training behaviour is read on its final assistant reply only
    (steering then reads replies too, see :func:`latentqa.steer.encoding.steering_reads`);
    ``dialog`` otherwise."""
    fit_texts: dict[int, str] = field(default_factory=dict)
    """Per training dialog, the text a fitted projector maps its read toward: its masked
    text (hidden system prompt, control turn), else its first training answer."""
    groups: list[int] | None = None
    """Per training example, the key the example order keeps together (up to
    ``share_reads`` examples per key): its dialog, so that they compute its read once, or
    for a contrastive yes/no pair a key of the pair's own (negative); None: the dialogs."""
    baselines: list[EncodedDialog | None] | None = None
    """With ``--read-contrast no-system``, per dialog, the same turn without its system
    prompt, encoded as :meth:`latentqa.reader.Reader.encode` does (``None``: the dialog
    has none, and reads zeros); unset otherwise."""


def example_lengths(
    data: PreparedData, max_read_tokens: int, n_read_layers: int, pool: str = "none"
) -> list[int]:
    """Approximate decoder length of each training example, for length-grouped batches.

    Placeholders (read positions kept, or pooled vectors, per read layer) plus question
    and answer at about four characters a token.
    """

    width = pool_width(pool)

    def kept(d: int) -> int:
        return width or min(data.dialogs[d].read_length, max_read_tokens)

    return [kept(d) * n_read_layers + (len(q) + len(a)) // 4 for d, q, a in data.train]


def reads_of(datasets: Sequence[LatentQADataset]) -> str:
    """``reply`` if every behaviour of ``datasets`` reads exactly its last reply, else
    ``dialog``."""
    behaviors = [b for dataset in datasets for b in dataset.behaviors]
    on_reply = all(
        b.kind == "stimulus_completion" and b.read_text and b.read_text == b.stimulus_model
        for b in behaviors
    )
    return "reply" if behaviors and on_reply else "dialog"


def _encode_all(
    dataset: LatentQADataset,
    tokenizer: PreTrainedTokenizerBase,
    dialogs: list[EncodedDialog],
    index_of: dict[tuple[str, str], int],
    source: int = 0,
    baselines: dict[int, EncodedDialog] | None = None,
) -> tuple[list[Fact], list[tuple[int, str]]]:
    """Encode each behaviour's dialog once; its QA pairs and masked text refer to it.

    ``source`` numbers the data folder (facts draw their distractors from their own).
    With ``baselines``, each dialog with a system prompt also gets its contrast baseline
    there, by dialog index: the dialog without it (see :mod:`latentqa.decoder.contrast`).
    """
    facts, hidden = [], []
    for behavior in dataset.behaviors:
        key = (behavior.kind, json.dumps(behavior.dialog()), behavior.read_text)
        if key not in index_of:
            index_of[key] = len(dialogs)
            if behavior.read_text:  # read only this text's tokens (e.g. a relation's subject)
                encoded = subject_span(tokenizer, behavior.dialog(), behavior.read_text)
            else:
                encoded = encode_dialog(tokenizer, behavior.dialog(), behavior.n_masked_messages)
            dialogs.append(encoded)
            if baselines is not None and has_system(behavior.dialog()):
                baselines[index_of[key]] = _baseline(tokenizer, behavior)
            if masked_text(behavior) and not behavior.read_text:
                hidden.append((index_of[key], masked_text(behavior)))
        system = behavior.system if behavior.kind == "system" else ""
        pairs = list(dataset.qa.get(behavior.label) or derived_qa(behavior.label, system))
        if masked_text(behavior) and not behavior.read_text:
            # The masked prompt itself answers the reconstruction question: as a fact it
            # also feeds yes/no ("is this the prompt?") against other labels' prompts.
            pairs.append((RECONSTRUCT_QUESTION, masked_text(behavior)))
        facts += [Fact(index_of[key], behavior.label, q, a, source) for q, a in pairs]
    return facts, hidden


def _baseline(tokenizer: PreTrainedTokenizerBase, behavior) -> EncodedDialog:
    """The behaviour's dialog without its system prompt, read as the Reader reads it."""
    dialog = without_system(behavior.dialog())
    if behavior.read_text:
        return subject_span(tokenizer, dialog, behavior.read_text)
    return encode_dialog(tokenizer, dialog, 0, mask_default_system=True)


def _load_split(folder: Path, config: TrainConfig, require_qa: bool = True) -> LatentQADataset:
    return load_latentqa(folder, config.kinds, require_qa=require_qa)


def _texts(datasets: list[LatentQADataset]) -> list[str]:
    """Plain texts for context prediction: every prompt and turn the data holds."""
    texts = []
    for dataset in datasets:
        for b in dataset.behaviors:
            texts += [b.system, b.control_user, b.control_model, b.stimulus_user, b.stimulus_model]
    return sorted({t for t in texts if len(t) >= 16})


def _contains_words(label: str, words: list[str]) -> bool:
    tokens = label.split("-")
    return any(tokens[i : i + len(words)] == words for i in range(len(tokens) - len(words) + 1))


def drop_heldout_lookalikes(
    dataset: LatentQADataset, heldout_labels: list[str]
) -> tuple[LatentQADataset, int]:
    """Drop behaviours whose label contains a held-out label's words.

    Extra data (the public release) uses other label names for similar behaviours:
    ``persona-tone-passive-aggressive`` there is the held-out ``tone-passive-aggressive``
    here. Training on it would make the held-out evaluation a test of recall.
    """
    slugs = [label.split("-", 1)[-1].split("-") for label in heldout_labels]
    keep = [label for label in dataset.labels if not any(_contains_words(label, s) for s in slugs)]
    return dataset.select_labels(keep), len(dataset.labels) - len(keep)


def prepare_data(config: TrainConfig, tokenizer: PreTrainedTokenizerBase) -> PreparedData:
    """Load, encode and sample the training and held-out data, task by task."""
    train_folder, eval_folder = data_folders(config)
    train_sets = [_load_split(train_folder, config)]
    extra = [_load_split(Path(f), config, False) for f in config.extra_data or []]
    n_dropped = 0
    if eval_folder is not None and extra:
        heldout_labels = load_latentqa(eval_folder, config.kinds).labels
        for dataset in extra:
            kept, dropped = drop_heldout_lookalikes(dataset, heldout_labels)
            train_sets.append(kept)
            n_dropped += dropped
    else:
        train_sets += extra
    dialogs: list[EncodedDialog] = []
    index_of: dict[tuple[str, str], int] = {}
    facts, hidden = [], []
    baselines = {} if config.read_contrast != "none" else None
    for source, dataset in enumerate(train_sets):
        more_facts, more_hidden = _encode_all(
            dataset, tokenizer, dialogs, index_of, source, baselines
        )
        facts += more_facts
        hidden += more_hidden
    if not facts and not hidden:
        raise LatentQAError(f"no training examples in {train_folder}")
    train_labels = {label for dataset in train_sets for label in dataset.labels}
    mix = parse_task_mix(config.task_mix)
    if mix == {"open": 1.0}:
        # Every QA pair once per epoch, as plain LIT does.
        train = [TaskExample(f.dialog, f.question, f.answer, "open") for f in facts]
        generator = torch.Generator().manual_seed(config.seed)
        if config.max_examples is not None and config.max_examples < len(train):
            keep = torch.randperm(len(train), generator=generator)[: config.max_examples]
            train = [train[i] for i in sorted(keep.tolist())]
    else:
        per_step = config.batch_size * config.grad_accum
        n = config.steps * per_step if config.steps else config.task_examples
        n = min(n, config.max_examples or n)
        sampler = TaskSampler(
            facts,
            hidden,
            _texts(train_sets),
            tokenizer,
            config.seed,
            questions=config.task_questions,
            negatives=config.yes_no_negatives,
        )
        train = sampler.sample(mix, n, len(dialogs))
        dialogs += sampler.context_dialogs
    eval_items: list[EvalItem] = []
    n_eval_labels = 0
    if eval_folder is not None:
        eval_set = load_latentqa(eval_folder, config.kinds)
        overlap = set(eval_set.labels) & train_labels
        if overlap:
            raise LatentQAError(
                f"{len(overlap)} held-out labels also appear in training data "
                f"(e.g. {sorted(overlap)[0]!r}): the evaluation would not be held out"
            )
        held_facts, held_hidden = _encode_all(
            eval_set, tokenizer, dialogs, index_of, baselines=baselines
        )
        # The held-out loss follows the training questions where the held-out data asks them.
        asked = {f.question for f in held_facts}
        held_questions = [q for q in config.task_questions or [] if q in asked] or None
        sampler = TaskSampler(
            held_facts,
            held_hidden,
            _texts([eval_set]),
            tokenizer,
            config.seed,
            questions=held_questions,
            negatives=config.yes_no_negatives,
        )
        usable = {t: w for t, w in mix.items() if sampler.available()[t]} or {"open": 1.0}
        held = sampler.sample(usable, config.eval_examples, len(dialogs))
        dialogs += sampler.context_dialogs
        labels = {f.dialog: f.label for f in held_facts}
        eval_items = [
            EvalItem(
                e.dialog, labels.get(e.dialog, f"text-{e.dialog}"), e.question, e.answer, e.task
            )
            for e in held
        ]
        n_eval_labels = len(eval_set.labels)
    counts: dict[str, int] = {}
    fit_texts: dict[int, str] = {}
    masked = dict(hidden)
    for example in train:
        counts[example.task] = counts.get(example.task, 0) + 1
        fit_texts.setdefault(example.dialog, masked.get(example.dialog, example.answer))
    return PreparedData(
        dialogs=dialogs,
        train=[(e.dialog, e.question, e.answer) for e in train],
        eval_items=eval_items,
        n_train_labels=len(train_labels),
        n_eval_labels=n_eval_labels,
        task_counts=counts,
        n_dropped_lookalikes=n_dropped,
        reads=reads_of(train_sets),
        fit_texts=fit_texts,
        groups=[e.dialog if e.pair < 0 else -1 - e.pair for e in train],
        baselines=None if baselines is None else [baselines.get(i) for i in range(len(dialogs))],
    )


def add_lora(model: nn.Module, config: TrainConfig) -> nn.Module:
    """Wrap ``model`` with trainable float32 LoRA adapters (base weights frozen).

    With ``config.lora_layers`` set, only those blocks get adapters; peft then needs the
    module names spelled out and the block list's name (found in the module tree).
    """
    from peft import LoraConfig, get_peft_model

    targets = config.lora_targets
    modules: str | list[str] = targets if targets == "all-linear" else targets.split(",")
    only: dict[str, object] = {}
    if config.lora_layers is not None:
        blocks = find_decoder_layers(model, config.layers_path)
        if targets == "all-linear":
            modules = linear_module_names(blocks)
        chosen = sorted(
            {check_layer_index(i, len(blocks), "LoRA layer") for i in config.lora_layers}
        )
        only = {"layers_to_transform": chosen, "layers_pattern": blocks.path.rsplit(".", 1)[-1]}
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=modules,
        task_type="CAUSAL_LM",
        **only,
    )
    torch.manual_seed(config.seed)
    peft_model = get_peft_model(model, lora)
    for parameter in peft_model.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()
    return peft_model


def fit_vector_standardizer(
    source: ActivationSource, data: PreparedData, config: TrainConfig, limit: int = 512
) -> tuple[list[float], list[float]]:
    """Mean and std of the raw vectors of up to ``limit`` training dialogs (seeded sample).

    ``source`` standardizes with them from then on. Deterministic, so a resumed run
    refits the same values.
    """
    dialogs = sorted({d for d, _, _ in data.train})
    generator = torch.Generator().manual_seed(config.seed)
    pick = [dialogs[i] for i in torch.randperm(len(dialogs), generator=generator)[:limit]]
    raw: list[torch.Tensor] = []
    for start in range(0, len(pick), 16):
        raw += source.compute(pick[start : start + 16])
    mean, std = fit_standardizer(raw)
    source.standardize(mean, std)
    return mean, std
