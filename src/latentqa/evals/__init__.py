"""Evaluations: every figure beside baselines that see the same inputs.

Each evaluation module exports one :class:`~latentqa.evals.registry.Evaluation` as
``EVALUATION`` (its config, run, report and suite runner); :mod:`latentqa.evals.registry`
lists the modules once, and ``latentqa eval <task>`` and ``eval all`` are generated from
that list. A run returns ``{"task": ..., "n": ..., "methods": {name: {metric: value}}}``
and the CLI prints a markdown table, or that object as the last line with ``--json``.
"""
