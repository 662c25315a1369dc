"""Configuration of control by steering (``latentqa steer``)."""

from __future__ import annotations

from dataclasses import dataclass

from latentqa.embedded import EMBEDDED_MODEL
from latentqa.errors import LatentQAError
from latentqa.typed_config import require_int, require_number

READ_MODES = ("auto", "prompt", "reply")


@dataclass
class SteerConfig:
    """Everything that defines a steering run. Unknown options are errors."""

    out: str
    """Output folder: the target's steering adapter (adapter_model.safetensors,
    adapter_config.json), steer.json, metrics.jsonl and loss.png."""
    control: str | None = None
    """Control file: a JSON list of [question, answer] pairs (or {question, answer}
    objects) that the decoder should answer about the steered target."""
    target: str = EMBEDDED_MODEL
    """Target model to steer: smollm2-135m (embedded), a local folder, a .gguf file."""
    decoder: str | None = None
    """Decoder folder from `latentqa train` or shipped:NAME; default: shipped:control for
    the embedded target (it reads the tone of replies and stereotypes)."""
    layers: list[int] | None = None
    """Target layers that get steering LoRA adapters; default: every layer up to the
    deepest read layer (later layers cannot change what the decoder reads)."""
    read_layers: list[int] | None = None
    """Target layers the decoder reads while steering; default: the decoder's own."""
    read: str = "auto"
    """What the decoder reads of each prompt while steering: prompt (the user prompt and
    the reply header), reply (the target's own unsteered greedy reply to it, generated
    once before steering; the prompt's tokens are not read) or auto (reply for decoders
    trained on replies, such as shipped:control; prompt otherwise)."""
    reply_tokens: int = 32
    """With read=reply: length of the generated replies read."""
    per_layer_loss: bool = False
    """With several read layers: read each layer separately, each with its own loss
    (averaged), instead of one reading of all layers together."""
    prompts: str | None = None
    """Prompts the target is read on: a JSON list of strings or a text file with one
    prompt per line; default: the built-in ordinary user prompts."""
    max_prompts: int | None = 256
    """Use at most this many prompts (a fixed random sample); all when unset."""
    steps: int = 40
    """Optimizer steps."""
    lr: float = 1e-3
    """Peak learning rate (AdamW) of the steering adapter."""
    batch_size: int = 4
    """Prompts per step; every control pair is asked about every prompt."""
    warmup_steps: int = 5
    """Linear warmup before a cosine decay to lr / 10."""
    lora_r: int = 8
    """Rank of the steering LoRA."""
    lora_alpha: int = 16
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_targets: str = "all-linear"
    """Linear modules to adapt in the chosen layers: all-linear or a comma-separated list
    of module names (q_proj,v_proj,...)."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 disables)."""
    seed: int = 0
    """Seed for the LoRA initialisation and the prompt order."""
    device: str = "auto"
    """auto (CUDA if available, else CPU), cpu, cuda, cuda:N."""
    dtype: str = "float32"
    """Frozen weights' dtype: float32 or bfloat16 (LoRA weights stay float32)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every option that needs no file or model, so bad values fail at once.

        Raises:
            LatentQAError: One line naming the option, its value and what to set instead.
        """
        if not str(self.out).strip():
            raise LatentQAError("out must not be empty: set --out to a folder")
        if self.read not in READ_MODES:
            raise LatentQAError(f"read must be one of {', '.join(READ_MODES)}, got {self.read!r}")
        for name in ("steps", "batch_size", "lora_r", "lora_alpha", "reply_tokens"):
            require_int(name, getattr(self, name), 1)
        require_int("max_prompts", self.max_prompts, 1, optional=True)
        require_int("warmup_steps", self.warmup_steps, 0)
        require_number("lr", self.lr, 0, low_open=True)
        require_number("max_grad_norm", self.max_grad_norm, 0)
        if not self.lora_targets.strip():
            raise LatentQAError("lora_targets must not be empty: use all-linear or module names")
        for name in ("layers", "read_layers"):
            if getattr(self, name) is not None and not getattr(self, name):
                raise LatentQAError(f"{name} must name at least one layer")
