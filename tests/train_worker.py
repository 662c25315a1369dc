"""Runs LIT in a subprocess for the resume and multi-process tests.

Usage: python train_worker.py CONFIG.json [--resume] [--dump-adapter DIR]
With --dump-adapter each rank also writes its adapter to DIR/rank<N>.safetensors.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from latentqa.train.config import TrainConfig
from latentqa.typed_config import config_from_dict


def main() -> None:
    config = config_from_dict(TrainConfig, json.loads(Path(sys.argv[1]).read_text()))
    dump = sys.argv[sys.argv.index("--dump-adapter") + 1] if "--dump-adapter" in sys.argv else None
    from latentqa.train.trainer import train

    result = train(config, resume="--resume" in sys.argv, progress=False)
    if dump:
        import torch.distributed as dist
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        rank = dist.get_rank() if dist.is_initialized() else 0
        state = get_peft_model_state_dict(result.decoder)
        save_file({k: v.contiguous() for k, v in state.items()}, f"{dump}/rank{rank}.safetensors")


if __name__ == "__main__":
    main()
