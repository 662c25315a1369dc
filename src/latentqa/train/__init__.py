"""Latent Interpretation Tuning: train a decoder that reads a target's activations."""

from latentqa.train.config import TrainConfig
from latentqa.train.trainer import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
