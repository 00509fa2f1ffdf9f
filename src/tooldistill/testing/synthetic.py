"""Generated Claude Code session logs, for benchmarks and scale tests.

The files follow the real on-disk format: one JSON line per content block, the lines of one
assistant reply share ``message.id``, every line links to the previous one by ``parentUuid``, tool
results come back as ``user`` lines with ``tool_result`` blocks, and a session opens with the
bookkeeping lines (``summary``, ``file-history-snapshot``) that real logs carry.  Contents are
deterministic for a given seed, so two runs of a benchmark read identical input.
"""

from __future__ import annotations

import json
import random
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

_FILES = [
    "src/app.py",
    "src/cart.py",
    "src/api/routes.py",
    "tests/test_cart.py",
    "README.md",
    "pyproject.toml",
]
_SYMBOLS = ["def total", "class Cart", "TODO", "import requests", "raise ValueError", "async def fetch"]
_COMMANDS = ["pytest -q", "git status", "ruff check .", "ls -la", "python -m build", "git diff HEAD~1"]
_ASKS = [
    "The test in {file} fails since yesterday. Can you find out why and fix it?",
    "Where do we handle {symbol}? I want to change it.",
    "Run the linter and fix what it reports in {file}.",
    "Add a short section to {file} on how to run the tests.",
    "Why is `{command}` slow on my machine?",
]


def _tool_use(rng: random.Random, root: str) -> tuple[str, dict[str, Any]]:
    file = f"{root}/{rng.choice(_FILES)}"
    choice = rng.randrange(6)
    if choice == 0:
        return "Read", {"file_path": file}
    if choice == 1:
        return "Grep", {"pattern": rng.choice(_SYMBOLS), "path": root, "output_mode": "content"}
    if choice == 2:
        return "Bash", {"command": rng.choice(_COMMANDS), "description": "Check the project state"}
    if choice == 3:
        return "Glob", {"pattern": "**/*.py", "path": root}
    if choice == 4:
        return "Edit", {"file_path": file, "old_string": "return 0", "new_string": "return sum(items)"}
    return "TodoWrite", {
        "todos": [{"content": "Fix the failing test", "status": "in_progress", "activeForm": "Fixing"}]
    }


def session_lines(seed: int, turns: int = 3, root: str = "/home/dev/project") -> list[dict[str, Any]]:
    """The JSON records of one generated session (``turns`` assistant replies with tool calls)."""
    rng = random.Random(seed)
    session = str(uuidlib.UUID(int=rng.getrandbits(128), version=4))
    counter = iter(range(1_000_000))
    lines: list[dict[str, Any]] = [
        {"type": "summary", "summary": "Generated session", "leafUuid": f"{session[:8]}-0"}
    ]
    parent: str | None = None
    minute = 0

    def envelope(kind: str, message: dict[str, Any]) -> dict[str, Any]:
        nonlocal parent, minute
        uuid = f"{session[:8]}-{next(counter)}"
        minute += 1
        record = {
            "parentUuid": parent,
            "isSidechain": False,
            "userType": "external",
            "cwd": root,
            "sessionId": session,
            "version": "2.0.14",
            "gitBranch": "main",
            "type": kind,
            "message": message,
            "uuid": uuid,
            "timestamp": f"2025-10-01T{10 + minute // 60:02d}:{minute % 60:02d}:00.000Z",
        }
        parent = uuid
        return record

    ask = rng.choice(_ASKS).format(
        file=rng.choice(_FILES), symbol=rng.choice(_SYMBOLS), command=rng.choice(_COMMANDS)
    )
    lines.append(envelope("user", {"role": "user", "content": ask}))
    for turn in range(turns):
        message_id = f"msg_{rng.getrandbits(64):016x}"
        usage = {"input_tokens": rng.randrange(5, 50), "output_tokens": rng.randrange(20, 400)}

        def reply(block: dict[str, Any], message_id: str = message_id, usage: dict = usage) -> dict[str, Any]:
            return {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5-20250929",
                "content": [block],
                "stop_reason": None,
                "usage": usage,
            }

        lines.append(envelope("assistant", reply({"type": "text", "text": f"Step {turn + 1}: let me look."})))
        calls = [_tool_use(rng, root) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
        ids = []
        for name, arguments in calls:
            call_id = f"toolu_{rng.getrandbits(64):016x}"
            ids.append(call_id)
            lines.append(
                envelope(
                    "assistant", reply({"type": "tool_use", "id": call_id, "name": name, "input": arguments})
                )
            )
        for call_id in ids:
            result = {"type": "tool_result", "tool_use_id": call_id, "content": "ok\n" * rng.randrange(1, 20)}
            lines.append(envelope("user", {"role": "user", "content": [result]}))
    final = f"msg_{rng.getrandbits(64):016x}"
    lines.append(
        envelope(
            "assistant",
            {
                "id": final,
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5-20250929",
                "content": [{"type": "text", "text": "Done: the change is in place and the tests pass."}],
                "stop_reason": "end_turn",
                "usage": {"input_tokens": 10, "output_tokens": 12},
            },
        )
    )
    return lines


def write_sessions(
    root: str | Path,
    count: int,
    turns: int = 3,
    seed: int = 0,
    projects: int = 20,
    progress: Callable[[int], None] | None = None,
) -> list[Path]:
    """Write ``count`` session files under ``root/<project-slug>/<session>.jsonl``; returns them.

    Each session has ``turns`` decision points (assistant replies that call tools).
    """
    root = Path(root)
    paths = []
    for index in range(count):
        lines = session_lines(seed * 1_000_003 + index, turns=turns)
        folder = root / f"-home-dev-project{index % projects}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{lines[1]['sessionId']}.jsonl"
        path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
        paths.append(path)
        if progress is not None:
            progress(index + 1)
    return paths
