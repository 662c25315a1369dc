"""Configuration of Latent Interpretation Tuning (``latentqa train``)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

from latentqa.decoder.folder import READ_CONTRASTS, check_contrast
from latentqa.embedded import EMBEDDED_MODEL
from latentqa.errors import LatentQAError
from latentqa.typed_config import require_int, require_number


@dataclass
class TrainConfig:
    """Everything that defines a LIT run. Unknown options are errors."""

    data: str
    """Training data folder in the LatentQA format. A folder written by `latentqa data
    build` (with train/ and heldout/ inside) uses its train/ split."""
    out: str
    """Output folder: adapter, latentqa.json, metrics.jsonl, loss.png, checkpoints/."""
    target: str = EMBEDDED_MODEL
    """Target model: smollm2-135m (embedded), a local transformers folder, a .gguf file
    or a hub id. The decoder is a LoRA copy of it."""
    extra_data: list[str] | None = None
    """More training folders in the public LatentQA release layout (e.g. the release's
    train/ with its 7,844 system prompts); qa.json is optional there: questions are
    derived from each label and its masked prompt (see --task-mix)."""
    task_mix: str = "open=1"
    """Training tasks and their proportions, e.g. 'open=1,yes_no=2,choice=1,reconstruct=1,
    context=1'. open: the data's QA pairs; yes_no: is this answer right (50/50 true or
    another label's answer); choice: pick the gold answer among 5 listed; reconstruct:
    reproduce the masked system prompt / control turn; context: predict the 1-16 tokens
    before or after a window of plain text. 'open=1' alone is plain LIT (every QA pair once
    per epoch); any other mix draws steps x batch examples, each used once."""
    task_questions: list[str] | None = None
    """Only QA pairs asking one of these questions (exact text) feed open, yes_no and
    choice, e.g. 'What was the assistant instructed to do?' (the question `eval
    system-prompt` asks); all questions by default. reconstruct and context are unchanged."""
    yes_no_negatives: Literal["answer", "read", "both"] = "answer"
    """How a yes_no "no" is made: answer: the dialog's read with another label's answer;
    read: each draw is a pair, the true answer asked of its own read (yes) and of another
    label's read (no), kept next to each other so they share a batch (needs --share-reads
    >= 2; a pair counts as two examples); both: a pair or an answer "no", 50/50."""
    task_examples: int = 20000
    """Examples drawn from a task mix when --steps is not set."""
    read_pool: Literal["none", "mean", "last", "mean+last"] = "none"
    """none: one placeholder per read position; mean: one per read layer holding the mean of
    its read positions; last: the last read position; mean+last: both, per read layer its
    mean then its last position (layer by layer). Pooled reads are short decoder inputs."""
    read_contrast: Literal["none", "no-system"] = "none"
    """no-system: the decoder reads each dialog's pooled read minus that of the same dialog
    without its system prompt (what the hidden prompt adds; a dialog without one reads
    zeros); needs --read-pool mean or last. Stored in latentqa.json: every reader of the
    decoder reads the same way."""
    standardize: bool = False
    """Standardize each read vector per dimension with the mean and standard deviation of
    up to 512 training dialogs' vectors (stored in latentqa.json and applied whenever the
    decoder reads): a few huge residual dimensions then no longer drown the rest."""
    eval_data: str | None = None
    """Held-out data folder; by default the heldout/ split beside --data's train/."""
    kinds: list[str] | None = None
    """Data kinds to use (system, control, stimulus, stimulus_completion); all by default."""
    read_layers: list[int] | None = None
    """Target layers whose outputs the decoder reads; default: about half depth."""
    write_layer: int = 0
    """Decoder layer at whose output the activations are patched in."""
    mode: Literal["replace", "add", "embed"] | None = None
    """Injection: replace the hidden state at the write layer, add the norm-matched vector
    there, or embed: the vectors replace the placeholders' input embeddings (soft input
    tokens; the write layer is not used). Unset: embed with a projector, else replace."""
    projector: Literal["none", "linear", "mlp"] = "none"
    """A trainable map per slot (read layer x pooling) from each pooled vector to the
    decoder's input-embedding space, trained with the LoRA and saved beside it as
    projector.safetensors: linear (affine) or mlp (affine plus a residual MLP starting at
    zero). Needs a pooled read (--read-pool) and writes with --mode embed."""
    projector_lr: float = 1e-3
    """The projector's peak learning rate (its own AdamW group, same schedule)."""
    projector_warmup_steps: int = 0
    """Optimizer steps that train the projector alone first (the LoRA stays frozen; the
    learning-rate schedule counts them)."""
    verbalize_steps: int = 0
    """Optimizer steps at the start on which the soft tokens are no read but the decoder's
    own mean input embedding of each dialog's masked text (what a fitted projector maps a
    read toward), so the LoRA learns to put a bag of words into words before it reads a
    target; the later steps read the target through the projector. Needs --projector;
    the learning-rate schedule counts them."""
    projector_init: Literal["fitted", "random", "distilled"] = "fitted"
    """fitted: each slot's map starts as the ridge map (closed form, see --projector-alpha)
    from the training dialogs' vectors to the decoder's mean input embedding of each
    dialog's masked text (its hidden system prompt or control turn; the answer where there
    is none), scaled to the embeddings' median norm; random: orthogonal maps of that norm;
    distilled (with --init-from, for a new --read-contrast): the ridge map from this run's
    reads to the soft tokens the --init-from decoder makes of the same dialogs as it reads
    them, with statistics refit on this run's reads: the decoder keeps what it learned."""
    projector_alpha: float = 100.0
    """Ridge penalty of the fitted start."""
    projector_fit_dialogs: int = 3000
    """The fitted start reads up to this many training dialogs (a seeded sample; from the
    activation cache with --cache-activations, else one target pass each)."""
    prompt_order: Literal["vectors-first", "question-first"] = "vectors-first"
    """vectors-first: the placeholders open the decoder's user turn, the question follows;
    question-first: the question comes first and the placeholders right before the answer
    (examples of one dialog then share their read's prefix only when they ask the same
    question, so --share-reads saves little)."""
    lora_from: Literal["start", "reads"] = "start"
    """start: the LoRA acts on every token of the decoder's prompt; reads: only on tokens
    that see a read (the placeholders and what follows them), so with --prompt-order
    question-first the question is encoded by the frozen model and the adapter learns to
    compare the read with it."""
    init_from: str | None = None
    """A decoder folder written by `latentqa train` whose adapter and projector start this
    run (a second phase, e.g. new questions or candidates for a decoder that reads); its
    read options must equal this run's, and its standardization statistics are kept. The
    optimizer and schedule start afresh (--resume continues the same run instead)."""
    max_read_tokens: int = 96
    """Keep only the last this-many read positions of each dialog."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA path."""
    lora_targets: str = "all-linear"
    """peft target_modules: 'all-linear' or a comma-separated list of module names."""
    lora_layers: list[int] | None = None
    """Decoder blocks that get LoRA adapters (negative counts from the end); all by
    default. Blocks 0..write_layer alone keep the blocks above the write layer exactly as
    the target has them, so the target's own computation (its factual recall, as in
    Patchscope) runs on what is written there."""
    lr: float = 2e-4
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    batch_size: int = 8
    """Examples per micro-batch (per process)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    share_reads: int = 4
    """Put up to this many examples of one dialog next to each other in a batch and
    compute their read once (the decoder prompt up to the last placeholder is shared;
    loss and gradients are unchanged, see docs/performance.md); with --prompt-order
    question-first, up to this many examples of a batch that ask the same question (a
    yes/no pair, one question about several dialogs) compute the question once instead;
    1: every example alone."""
    steps: int | None = None
    """Optimizer steps; overrides epochs when set."""
    epochs: float = 1.0
    """Passes over the training data, when steps is not set."""
    warmup_steps: int = 20
    """Linear warmup, in optimizer steps, before the cosine decay."""
    min_lr_ratio: float = 0.1
    """The cosine decays to lr * min_lr_ratio."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 disables)."""
    seed: int = 0
    """Seed for LoRA init, data order and evaluation sampling."""
    device: str = "auto"
    """auto (CUDA if available, else CPU), cpu, cuda, cuda:N."""
    dtype: str = "auto"
    """Frozen weights' dtype: auto (bfloat16 where this machine runs it at least as fast as
    float32: a CUDA device that supports it, or a CPU whose bfloat16 matmuls measure as
    fast; see latentqa.devices.auto_dtype), float32, bfloat16. LoRA weights stay float32."""
    cache_activations: bool = False
    """Compute the frozen target's activations once and cache them on disk; a new cache
    takes the reads it shares with earlier caches in the same --cache-dir (more data
    added: only the new dialogs are read)."""
    cache_dir: str | None = None
    """Where the activation cache goes; default <out>/activation-cache."""
    eval_every: int = 50
    """Evaluate on the held-out split every this-many optimizer steps (0: only at end)."""
    eval_examples: int = 256
    """Held-out examples per evaluation (fixed sample)."""
    save_every: int = 50
    """Write a checkpoint every this-many optimizer steps (0: only at end)."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    max_examples: int | None = None
    """Use at most this many training examples (a fixed random sample); all by default."""
    layers_path: str | None = None
    """Dotted path of the decoder block list, for models the layer search gets wrong."""
    trust_remote_code: bool = False
    """Allow custom model code from the model folder (only for models you trust)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every option that needs no file or model, so bad values fail at once.

        An unset ``mode`` is resolved here: ``embed`` with a projector, else ``replace``.

        Raises:
            LatentQAError: One line naming the option, its value and what to set instead.
        """
        if self.mode is None:
            self.mode = "embed" if self.projector != "none" else "replace"
        for name in ("data", "out"):
            if not str(getattr(self, name)).strip():
                raise LatentQAError(f"{name} must not be empty: set {name} to a folder")
        positive = (
            "lora_r",
            "lora_alpha",
            "batch_size",
            "grad_accum",
            "share_reads",
            "max_read_tokens",
            "eval_examples",
            "task_examples",
            "keep_checkpoints",
        )
        for name in positive:
            require_int(name, getattr(self, name), 1)
        for name in (
            "warmup_steps",
            "eval_every",
            "save_every",
            "projector_warmup_steps",
            "verbalize_steps",
        ):
            require_int(name, getattr(self, name), 0)
        for name in ("steps", "max_examples"):
            require_int(name, getattr(self, name), 1, optional=True)
        require_number("epochs", self.epochs, 0, low_open=True)
        require_number("lr", self.lr, 0, low_open=True)
        require_number("weight_decay", self.weight_decay, 0)
        require_number("max_grad_norm", self.max_grad_norm, 0)
        require_number("lora_dropout", self.lora_dropout, 0, 1, high_open=True)
        require_number("min_lr_ratio", self.min_lr_ratio, 0, 1)
        require_int("projector_fit_dialogs", self.projector_fit_dialogs, 2)
        require_number("projector_lr", self.projector_lr, 0, low_open=True)
        require_number("projector_alpha", self.projector_alpha, 0, low_open=True)
        choices = {
            "read_pool": ("none", "mean", "last", "mean+last"),
            "mode": ("replace", "add", "embed"),
            "projector": ("none", "linear", "mlp"),
            "projector_init": ("fitted", "random", "distilled"),
            "prompt_order": ("vectors-first", "question-first"),
            "lora_from": ("start", "reads"),
            "read_contrast": READ_CONTRASTS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise LatentQAError(
                    f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )
        self._check_projector()
        check_contrast(self.read_contrast, self.read_pool)
        if self.lora_layers is not None and not self.lora_layers:
            raise LatentQAError("lora_layers must name at least one block (or leave it unset)")
        if not self.lora_targets.strip():
            raise LatentQAError("lora_targets must not be empty: use all-linear or module names")
        from latentqa.data.format import KINDS
        from latentqa.train.tasks import parse_task_mix

        parse_task_mix(self.task_mix)  # unknown tasks are errors before any load
        if self.kinds is not None:
            unknown = sorted(set(self.kinds) - set(KINDS))
            if unknown or not self.kinds:
                what = f"unknown data kind(s) {unknown}" if unknown else "kinds is empty"
                raise LatentQAError(f"{what}: set --kinds to any of {', '.join(KINDS)}")
        if self.read_layers is not None and not self.read_layers:
            raise LatentQAError("read_layers must name at least one layer")
        if self.init_from is not None and not str(self.init_from).strip():
            raise LatentQAError("init_from must name a decoder folder (or leave it unset)")
        if self.projector_init == "distilled" and (self.init_from is None or not self.standardize):
            raise LatentQAError(
                "--projector-init distilled maps this run's reads onto the soft tokens of the "
                "--init-from decoder: add --init-from DECODER and --standardize"
            )
        if self.task_questions is not None and not (
            self.task_questions
            and all(isinstance(q, str) and q.strip() for q in self.task_questions)
        ):
            raise LatentQAError("--task-questions needs at least one non-empty question")
        if self.yes_no_negatives != "answer" and self.share_reads < 2:
            raise LatentQAError(
                f"--yes-no-negatives {self.yes_no_negatives} keeps each yes/no pair in one "
                "batch through --share-reads: set --share-reads to 2 or more"
            )

    def _check_projector(self) -> None:
        """Options that contradict each other around ``projector`` and ``mode embed``."""
        if self.mode == "embed" and self.write_layer != 0:
            raise LatentQAError(
                f"--mode embed writes the input embeddings, so --write-layer "
                f"{self.write_layer} has no effect: leave --write-layer at 0"
            )
        if self.verbalize_steps and self.projector == "none":
            raise LatentQAError(
                "--verbalize-steps writes soft tokens in the decoder's input-embedding space, "
                "where reads arrive through a projector: add --projector linear or mlp"
            )
        if self.projector == "none":
            changed = [
                f.name
                for f in fields(self)
                if f.name.startswith("projector_") and getattr(self, f.name) != f.default
            ]
            if changed:
                flag = "--" + changed[0].replace("_", "-")
                raise LatentQAError(f"{flag} applies to a projector: add --projector linear or mlp")
            return
        if self.read_pool == "none":
            raise LatentQAError(
                f"--projector {self.projector} maps one pooled vector per slot: set --read-pool "
                "mean, last or mean+last"
            )
        if self.mode != "embed":
            raise LatentQAError(
                f"--projector {self.projector} writes soft input tokens (--mode embed), not "
                f"--mode {self.mode}: leave --mode unset or set it to embed"
            )
        if self.steps is not None and self.projector_warmup_steps >= self.steps:
            raise LatentQAError(
                f"projector_warmup_steps ({self.projector_warmup_steps}) leaves no step for the "
                f"LoRA in {self.steps} steps: set --projector-warmup-steps below --steps"
            )
        if self.verbalize_steps and self.projector_warmup_steps:
            raise LatentQAError(
                "--verbalize-steps trains the LoRA alone and --projector-warmup-steps the "
                "projector alone, both from step 0: use one of them"
            )
        if self.steps is not None and self.verbalize_steps >= self.steps:
            raise LatentQAError(
                f"verbalize_steps ({self.verbalize_steps}) leaves no step that reads the "
                f"target in {self.steps} steps: set --verbalize-steps below --steps"
            )
