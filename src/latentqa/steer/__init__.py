"""Control: steer a target model with the frozen decoder's loss (LIT, "Control").

Train LoRA adapters on chosen layers of the target so that the decoder, reading the
target's activations on ordinary prompts, answers a control's questions with its
answers. The saved adapter is an ordinary peft adapter of the target.

Example::

    from latentqa.steer import SteerConfig, steer, load_steered
    result = steer(SteerConfig(out="happy", target="smollm2-135m"),
                   [["What tone is the assistant using?", "A cheerful tone."]])
    model, tokenizer = load_steered("smollm2-135m", "happy")
"""

from latentqa.steer.config import SteerConfig
from latentqa.steer.encoding import encode_prompt
from latentqa.steer.loss import steering_loss
from latentqa.steer.model import (
    DECODER_ADAPTER,
    STEER_ADAPTER,
    SteerableModel,
    load_steered,
)
from latentqa.steer.prompts import load_prompts
from latentqa.steer.qa_pairs import (
    QAPair,
    combine_controls,
    load_control,
    parse_control,
    save_control,
)
from latentqa.steer.trainer import SteerResult, steer, train_steering
from latentqa.steer.vector import add_vector, steering_vector, tune_setting

__all__ = [
    "DECODER_ADAPTER",
    "STEER_ADAPTER",
    "QAPair",
    "SteerConfig",
    "SteerResult",
    "SteerableModel",
    "add_vector",
    "combine_controls",
    "encode_prompt",
    "load_control",
    "load_prompts",
    "load_steered",
    "parse_control",
    "save_control",
    "steer",
    "steering_loss",
    "steering_vector",
    "train_steering",
    "tune_setting",
]
