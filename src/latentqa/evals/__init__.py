"""Evaluations: every figure beside baselines that see the same inputs.

Each evaluation returns ``{"task": ..., "n": ..., "methods": {name: {metric: value}}}``
and the CLI prints a markdown table, or that object as the last line with ``--json``.
"""
