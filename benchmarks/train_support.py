"""Options, data, the reference path and machine measures for ``train_throughput.py``."""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from latentqa.capture import left_pad, pad_token_id, position_ids_for
from latentqa.decoder.inputs import decoder_batch
from latentqa.models import load_model
from latentqa.patch import patch_activations
from latentqa.schedule import lr_lambda

_PERSONAS = [
    f"{adjective} {role}"
    for adjective in (
        "a cheerful",
        "a grumpy",
        "a meticulous",
        "a forgetful",
        "an adventurous",
        "a cautious",
        "a sarcastic",
        "a poetic",
    )
    for role in (
        "pirate captain",
        "librarian",
        "chess coach",
        "space engineer",
        "gardener",
        "detective",
        "chef",
        "history teacher",
    )
]
_PROMPTS = [
    "I am planning a weekend trip with my family and I have no idea where to start. "
    "Could you help me put together a rough plan?",
    "My code keeps crashing when I open a large file, and the error message is not very "
    "helpful. How should I go about finding the cause?",
    "What would be a good way to spend a rainy afternoon at home without looking at a "
    "screen the whole time?",
    "I want to learn a new language this year but I keep giving up after a few weeks. "
    "Do you have any advice that actually works?",
]


def write_synthetic_data(folder: Path, n_behaviors: int = 64) -> Path:
    """A LatentQA-format folder (system.json + qa.json): one persona per behaviour."""
    folder.mkdir(parents=True, exist_ok=True)
    behaviors, qa = [], {}
    for i in range(n_behaviors):
        persona = _PERSONAS[i % len(_PERSONAS)]
        label = f"persona-{i:03d}"
        behaviors.append(
            {
                "label": label,
                "system": f"You are {persona}.",
                "stimulus_user": _PROMPTS[i % len(_PROMPTS)],
            }
        )
        qa[label] = [
            [
                "Who is the assistant pretending to be?",
                f"The assistant is playing the part of {persona}, and it shapes the tone "
                "and content of its replies to match that character.",
            ],
            [
                "How will the assistant's reply differ from a plain answer?",
                f"It will answer in the voice of {persona}, adding the habits, vocabulary "
                "and attitude that such a person would show.",
            ],
        ]
    (folder / "system.json").write_text(json.dumps(behaviors, indent=1))
    (folder / "qa.json").write_text(json.dumps(qa, indent=1))
    return folder


def subset_data(source: Path, folder: Path, n_labels: int) -> Path:
    """Copy the behaviours of the first ``n_labels`` labels of ``qa.json`` (all kinds).

    The activation cache covers every dialog of the folder, so a large folder would
    spend minutes building it; a label subset keeps the data's shape and the run short.
    """
    qa = json.loads((source / "qa.json").read_text())
    keep = set(list(qa)[:n_labels])
    folder.mkdir(parents=True, exist_ok=True)
    for path in source.glob("*.json"):
        if path.name == "qa.json":
            continue
        items = json.loads(path.read_text())
        if isinstance(items, list):
            (folder / path.name).write_text(
                json.dumps([item for item in items if item.get("label") in keep])
            )
    (folder / "qa.json").write_text(json.dumps({k: v for k, v in qa.items() if k in keep}))
    return folder


def matmul_gflops(dtype: torch.dtype, n: int = 2048, min_seconds: float = 1.0) -> float:
    """Dense ``n x n`` matmul throughput in GFLOP/s (2 n^3 per product)."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    for _ in range(2):
        torch.mm(a, b)
    reps, start = 0, time.perf_counter()
    while True:
        torch.mm(a, b)
        reps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and reps >= 3:
            return 2 * n**3 * reps / elapsed / 1e9


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1 / 1024**2 if sys.platform == "darwin" else 1 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def parse_args(argv: list[str] | None, description: str, share_reads: int) -> argparse.Namespace:
    """The benchmark's options (``share_reads``: the trainer's default)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per path")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per path and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the median is reported")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-read-tokens", type=int, default=96)
    parser.add_argument(
        "--share-reads",
        type=int,
        default=share_reads,
        help="path (a): examples of one dialog that share its read (the trainer's default)",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16"),
        help="frozen weights of path (a); auto = what the trainer picks (auto_dtype)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument(
        "--data",
        default=None,
        help="LatentQA-format folder (default: a synthetic one in a temporary folder)",
    )
    parser.add_argument(
        "--labels",
        type=int,
        default=24,
        help="with --data, use only the behaviours of the first this-many labels of its "
        "qa.json (0: all; the cache covers every dialog)",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        help="after timing, run this many more steps of path (a) under torch.profiler and "
        "print its ops by self CPU time (the timed figures do not include them)",
    )
    parser.add_argument(
        "--check-trainer",
        action="store_true",
        help="also time latentqa.train.trainer.train itself on the same data and cache",
    )
    return parser.parse_args(argv)


class Reference:
    """Path (b): a straightforward LIT step in float32 with a full target forward each step.

    Every step recomputes the target's activations with a full forward (all blocks and
    the LM head, ``output_hidden_states=True``) under ``disable_adapter()``, then runs
    the decoder with ``labels=`` (logits at every position, -100 outside the answer),
    patched via ``patch_activations``.
    """

    def __init__(
        self,
        config,
        data,
        tokenizer,
        device: torch.device,
        n_steps: int,
        read_layer: int,
        write_layer: int,
        mode: str = "replace",
    ) -> None:
        model, _ = load_model(config.target, device=device, dtype=torch.float32)
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.lora_targets,
            task_type="CAUSAL_LM",
        )
        torch.manual_seed(config.seed)
        self.model = get_peft_model(model, lora)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.trainable, lr=config.lr, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(config.warmup_steps, n_steps, config.min_lr_ratio)
        )
        self.model.train()
        self.config, self.data, self.tokenizer, self.device = config, data, tokenizer, device
        self.pad_id = pad_token_id(tokenizer)
        self.read_layer, self.write_layer, self.mode = read_layer, write_layer, mode
        self.dialog_tokens: list[int] = []
        """Real target tokens read per step."""

    def step(self, examples) -> tuple[float, int, int]:
        """One optimizer step: ``(loss, decoder input tokens, 0)``."""
        config, reference = self.config, self.model
        dialogs = [self.data.dialogs[d] for d, _, _ in examples]
        ids, mask = left_pad([e.input_ids for e in dialogs], self.pad_id, self.device)
        with torch.no_grad(), reference.disable_adapter():
            out = reference(
                input_ids=ids,
                attention_mask=mask,
                position_ids=position_ids_for(mask),
                output_hidden_states=True,
                use_cache=False,
            )
        hidden = out.hidden_states[self.read_layer + 1]  # output of block read_layer
        width = ids.shape[1]
        vectors = [
            hidden[row, width - len(e.input_ids) + e.read_start :][-config.max_read_tokens :]
            for row, e in enumerate(dialogs)
        ]
        batch, flat = decoder_batch(
            self.tokenizer, vectors, [q for _, q, _ in examples], [a for _, _, a in examples]
        )
        labels = batch.input_ids.masked_fill(~batch.label_mask, -100)
        placeholders = batch.placeholder_mask
        with patch_activations(reference, self.write_layer, placeholders, flat, self.mode):
            loss = reference(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=position_ids_for(batch.attention_mask),
                labels=labels,
                use_cache=False,
            ).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trainable, config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.dialog_tokens.append(int(mask.sum()))
        return float(loss.detach()), int(batch.attention_mask.sum()), 0
