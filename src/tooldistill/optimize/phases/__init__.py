"""The kinds of optimize phase, by the name a phase section gives as ``kind:``.

- ``dspy``: DSPy bootstraps few-shot demonstrations (``phases.dspy``);
- ``gepa``: GEPA evolves the instructions (``phases.gepa``);
- ``finetune``: LoRA distillation of the student's weights (``phases.finetune``);
- ``dicl``: the teacher's nearest examples as each request's demonstrations (``phases.dicl``);
- ``reward``: GRPO on the student's weights, rewarded by the match verdict (``phases.reward``).

The contract is in ``phases.base``.  A new kind is a ``PhaseKind`` subclass in a module of this
package, registered below (``optimize.kinds.register``; or by a plugin before its config loads).
"""

from __future__ import annotations

from tooldistill.optimize.kinds import KINDS, phase_kind, register
from tooldistill.optimize.phases.base import (
    OptimizeError,
    PhaseContext,
    PhaseKind,
    PhaseOutput,
    PhaseResources,
    Progress,
)
from tooldistill.optimize.phases.dicl import DICL
from tooldistill.optimize.phases.dspy import DSPY
from tooldistill.optimize.phases.finetune import FINETUNE
from tooldistill.optimize.phases.gepa import GEPA
from tooldistill.optimize.phases.reward import REWARD

for _kind in (DSPY, GEPA, FINETUNE, DICL, REWARD):
    register(_kind)

#: Every phase kind, by name (``optimize.kinds.KINDS``).
PHASE_KINDS = KINDS


__all__ = [
    "PHASE_KINDS",
    "OptimizeError",
    "PhaseContext",
    "PhaseKind",
    "PhaseOutput",
    "PhaseResources",
    "Progress",
    "phase_kind",
    "register",
]
