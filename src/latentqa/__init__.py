"""latentqa: read a language model's activations in plain English, and steer with them."""

from latentqa.errors import LatentQAError

__version__ = "0.1.0"
__all__ = ["LatentQAError", "__version__"]
