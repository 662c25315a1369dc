"""Reference dialogs: what an answer's evidence is weighed against.

An answer counts as read from a dialog's activations when it is more likely given them
than given other dialogs' (on average): these are those other dialogs, a seeded sample
of the package's built-in training ``system`` behaviours (never evaluation items).
"""

from __future__ import annotations

import random

from latentqa.data.format import load_latentqa
from latentqa.package_data import package_file

Message = dict[str, str]


REFERENCE_DIALOGS = 16
"""How many reference dialogs an answer's evidence is weighed against
(see :meth:`latentqa.reader.Reader.reference_reads`)."""


def reference_dialogs(k: int = REFERENCE_DIALOGS, seed: int = 0) -> list[list[Message]]:
    """``k`` dialogs (a seeded sample) of the package's built-in training ``system``
    behaviours: other dialogs for an answer's evidence, never evaluation items."""
    folder = package_file("latentqa", "resources/heldout/system-prompt/train")
    behaviors = load_latentqa(folder, ["system"]).behaviors
    picked = random.Random(f"references:{seed}").sample(behaviors, min(k, len(behaviors)))
    return [b.dialog() for b in picked]
