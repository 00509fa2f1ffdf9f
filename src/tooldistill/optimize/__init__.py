"""Prompt optimization: the student's instructions and demonstrations, tuned against the teacher.

- ``student``: one request to the student endpoint with a prompt (system text + few-shot messages),
  scored by the matcher.  No DSPy, no Ray Tune: Tune trial workers import only this.
- ``program``: the student as a DSPy module, so DSPy optimizers can bootstrap demonstrations.
- ``adapter``: the ``gepa`` adapter (score = match score, feedback = the matcher's reason).
- ``tune_eval``: candidate evaluations as Ray Tune trials, several side by side.
- ``reflection``: the reflection model (Claude through ``anthropic``, or OpenAI-compatible) with cost.
- ``config``: the optimize config (phases, data, student, reflection, Tune); ``kinds``: the
  registry the config checks phase kinds against.
- ``phases``: one module per phase kind (``dspy``, ``gepa``, ``finetune``) on one contract.
- ``run``: the phase schedule, the run folder, resume, export.
- ``sweep``: a Ray Tune search over optimize-and-evaluate runs.
"""

# The phase kinds register themselves in ``kinds`` on import: a config checked anywhere knows them.
from tooldistill.optimize import phases as _phases  # noqa: E402, F401
