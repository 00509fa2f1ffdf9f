"""Readers against damaged logs: one bad line must cost that line, never the file.

Each fixture (Claude Code session and stream-json logs, the API-log fixtures) is damaged one line
at a time with a fixed seed: the file cut in the middle of a line, a flipped byte, a value of the
wrong type somewhere in a line's JSON, nesting too deep to parse, nesting deep enough to parse but
not to walk, a line of several MB.  For every damaged copy the reader must

- not fail on the file (no exception, no line-0 quarantine record the intact file does not have);
- still give every trace of the intact file that the damage cannot have touched: for an API log,
  every trace of another line; for a Claude Code log, every trace whose reply ends before the
  damaged line (its history is older still).
"""

from __future__ import annotations

import json
import random
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest

from conftest import CLAUDE_CODE, FIXTURES
from tooldistill.readers import FORMATS, Ignored, Quarantined, ReadContext, ReaderOptions, SourceFile
from tooldistill.schema import Trace

SEED = 20250602
HUGE_BYTES = 3 * 1024 * 1024
#: Parses (json's limit is about 1000 levels) but is deep enough to trip a recursive walk.
DEEP_BUT_PARSEABLE = 900

FILES: dict[str, list[Path]] = {
    "claude_code": sorted(p for p in CLAUDE_CODE.rglob("*.jsonl") if p.stat().st_size),
    "anthropic": sorted((FIXTURES / "api_logs").glob("anthropic_*.jsonl")),
    "openai": sorted((FIXTURES / "api_logs").glob("openai_*.jsonl")),
}


@dataclass(frozen=True)
class Damage:
    """One damaged copy of a file: what was done, the first line it touched, the bytes."""

    kind: str
    line: int
    detail: str
    data: bytes


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a value inside a JSON value."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*prefix, key)
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield (*prefix, index)
            yield from _paths(item, (*prefix, index))


def _set(value: Any, path: tuple[Any, ...], new: Any) -> None:
    for key in path[:-1]:
        value = value[key]
    value[path[-1]] = new


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        value = value[key]
    return value


def _object(line: bytes) -> dict[str, Any] | None:
    """The JSON object on a line, or None (fixtures hold broken lines on purpose)."""
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _other_type(current: Any, rng: random.Random) -> Any:
    """A value of a different JSON type than ``current``."""
    choices: list[Any] = [{"type": {"x": [1]}, "text": 3}, ["a", {"b": None}], "text", 7, None, True, 1.5]
    return rng.choice([c for c in choices if type(c) is not type(current)])


def damages(data: bytes, rng: random.Random) -> Iterator[Damage]:
    lines = data.split(b"\n")
    numbered = [i for i, line in enumerate(lines) if line.strip()]
    parsed = [i for i in numbered if _object(lines[i]) is not None]
    pick = lambda: rng.choice(numbered)  # noqa: E731
    pick_parsed = lambda: rng.choice(parsed)  # noqa: E731

    def replace(index: int, line: bytes) -> bytes:
        return b"\n".join([*lines[:index], line, *lines[index + 1 :]])

    for _ in range(2):
        index = pick()
        cut = rng.randrange(1, max(2, len(lines[index])))
        yield Damage(
            "truncated",
            index + 1,
            f"cut at byte {cut}",
            b"\n".join(lines[:index]) + b"\n" + lines[index][:cut],
        )
    for _ in range(4):
        index = pick()
        line = bytearray(lines[index])
        at = rng.randrange(len(line))
        flip = rng.randrange(1, 256)
        if line[at] ^ flip in (0x0A, 0x0D):  # a new line break would renumber the file
            flip ^= 0x20
        line[at] ^= flip
        yield Damage("byte flip", index + 1, f"byte {at} ^ {flip:#x}", replace(index, bytes(line)))
    for _ in range(8):
        index = pick_parsed()
        record = json.loads(lines[index])
        paths = list(_paths(record))
        if not paths:
            continue
        path = rng.choice(paths)
        new = _other_type(_get(record, path), rng)
        _set(record, path, new)
        yield Damage(
            "wrong type", index + 1, f"{list(path)} = {new!r}", replace(index, json.dumps(record).encode())
        )
    index = pick()
    yield Damage(
        "too deep to parse", index + 1, "100k nested lists", replace(index, b"[" * 100_000 + b"]" * 100_000)
    )
    index = pick_parsed()
    record = json.loads(lines[index])
    path = rng.choice(list(_paths(record)) or [("extra",)])
    deep: Any = "bottom"
    for _ in range(DEEP_BUT_PARSEABLE):
        deep = [deep]
    _set(record, path, deep)
    yield Damage(
        "deep but parseable",
        index + 1,
        f"{list(path)} nested {DEEP_BUT_PARSEABLE} deep",
        replace(index, json.dumps(record).encode()),
    )
    index = pick_parsed()
    record = json.loads(lines[index])
    strings = [p for p in _paths(record) if isinstance(_get(record, p), str)]
    if strings:
        path = rng.choice(strings)
        _set(record, path, _get(record, path) + " lorem" * (HUGE_BYTES // 6))
        yield Damage(
            "huge line",
            index + 1,
            f"{list(path)} grown to {HUGE_BYTES} bytes",
            replace(index, json.dumps(record).encode()),
        )


def run(format_name: str, path: Path, data: bytes, tmp: Path) -> tuple[list[Trace], list[Quarantined]]:
    file = tmp / path.name
    file.write_bytes(data)
    source = SourceFile(str(file), str(file), pafs.LocalFileSystem())
    items = list(FORMATS[format_name].read(source, ReadContext.create(ReaderOptions())))
    traces = [i for i in items if not isinstance(i, Quarantined | Ignored)]
    return traces, [i for i in items if isinstance(i, Quarantined)]


def reply_ends(path: Path, traces: list[Trace]) -> dict[str, int]:
    """Trace id -> the last line its decision depends on.

    API logs: the trace's own line.  Claude Code: the last line of its reply (the lines of one
    reply share ``message.id``); its history lies before it.
    """
    last: dict[str, int] = {}
    for number, line in enumerate(path.read_bytes().split(b"\n"), 1):
        record = _object(line)
        if record is not None:
            message = record.get("message")
            if isinstance(message, dict) and isinstance(message.get("id"), str):
                last[message["id"]] = number
    return {t.id: max(t.metadata["line"], last.get(t.source_id, 0)) for t in traces}


@pytest.mark.parametrize("format_name", list(FILES))
def test_damage_costs_the_damaged_lines_only(format_name: str, tmp_path: Path) -> None:
    rng = random.Random(f"{SEED}:{format_name}")
    failures: list[str] = []
    assert FILES[format_name], f"no fixtures for {format_name}"
    for path in FILES[format_name]:
        data = path.read_bytes()
        intact, intact_bad = run(format_name, path, data, tmp_path)
        assert intact, f"{path.name}: the intact fixture gives no trace"
        ends = reply_ends(path, intact)
        whole_file = {q.reason for q in intact_bad if q.line == 0}
        for damage in damages(data, rng):
            what = f"{path.relative_to(FIXTURES)} line {damage.line}: {damage.kind} ({damage.detail[:120]})"
            try:
                traces, quarantined = run(format_name, path, damage.data, tmp_path)
            except Exception:
                failures.append(f"{what}: reader raised\n{traceback.format_exc(limit=-4)}")
                continue
            lost_file = [q.reason for q in quarantined if q.line == 0 and q.reason not in whole_file]
            if lost_file:
                failures.append(f"{what}: the file was lost: {lost_file}")
            api = format_name != "claude_code"
            expected = {
                trace_id
                for trace_id, end in ends.items()
                if (end != damage.line if api and damage.kind != "truncated" else end < damage.line)
            }
            missing = expected - {t.id for t in traces}
            if missing:
                names = sorted(t.source_id for t in intact if t.id in missing)
                failures.append(f"{what}: traces of untouched lines lost: {names}")
    assert not failures, f"{len(failures)} damaged copies lost more than their line:\n\n" + "\n\n".join(
        failures
    )
