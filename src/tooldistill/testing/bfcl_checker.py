"""BFCL's own AST checker, for agreement tests and benchmarks (not used by the pipeline).

``bfcl_eval.eval_checker.ast_eval.ast_checker`` imports ``bfcl_eval.constants.model_config``,
which imports every model handler of the leaderboard and, through them, a dozen API SDKs.  The
checker reads one thing from it: whether a model's function names have dots written as
underscores.  So a minimal stand-in for that module is registered before the import (only when
the real one is not already loaded), and the checker then runs in the project's environment with
only the ``bfcl-eval`` data package installed (``pip install --no-deps bfcl-eval``).
"""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass
from functools import cache
from typing import Any

#: A prompt-mode model name: function names keep their dots.
PROMPT_MODEL = "claude-sonnet-4-5-20250929"


@dataclass
class _ModelConfig:
    underscore_to_dot: bool


class _Configs(dict):  # type: ignore[type-arg]
    def __missing__(self, name: str) -> _ModelConfig:
        return _ModelConfig(underscore_to_dot=name.endswith("-FC"))


@cache
def load_checker() -> Any:
    """The ``ast_checker`` function; raises ImportError when bfcl-eval is not installed."""
    module_name = "bfcl_eval.constants.model_config"
    if module_name not in sys.modules:
        stand_in = types.ModuleType(module_name)
        stand_in.MODEL_CONFIG_MAPPING = _Configs()  # type: ignore[attr-defined]
        sys.modules[module_name] = stand_in
    from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker

    return ast_checker


def bfcl_verdict(
    functions: list[dict[str, Any]],
    calls: list[dict[str, Any]],
    ground_truth: list[dict[str, Any]],
    category: str,
    model_name: str = PROMPT_MODEL,
) -> tuple[bool, str]:
    """(valid, error text) from BFCL's checker for ``calls`` ([{"name", "arguments"}]).

    No-call categories are judged as BFCL's relevance runner does: valid when there is no call.
    A checker exception counts as invalid, with the exception as the reason.
    """
    if category.endswith("irrelevance"):
        return (not calls, "" if not calls else "made a call")
    from bfcl_eval.constants.enums import Language

    checker = load_checker()
    output = [{c["name"]: c.get("arguments") or {}} for c in calls]
    try:
        result = checker(functions, output, ground_truth, Language.PYTHON, category, model_name)
    except Exception as error:  # the checker has KeyErrors on some malformed inputs
        return False, f"checker raised {type(error).__name__}: {error}"
    return bool(result["valid"]), json.dumps(result.get("error"), default=str)[:300]


def load_entries(category: str) -> dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]] | None]]:
    """id → (function list, ground truth or None) for one category of the installed package."""
    from tooldistill.readers.bfcl import package_data_dir

    data = package_data_dir()
    entries: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]] | None]] = {}
    for line in (data / f"BFCL_v4_{category}.json").read_text(encoding="utf-8").splitlines():
        if line.strip():
            entry = json.loads(line)
            entries[entry["id"]] = (entry["function"], None)
    answers = data / "possible_answer" / f"BFCL_v4_{category}.json"
    if answers.exists():
        for line in answers.read_text(encoding="utf-8").splitlines():
            if line.strip():
                answer = json.loads(line)
                if answer["id"] in entries:
                    entries[answer["id"]] = (entries[answer["id"]][0], answer["ground_truth"])
    return entries
