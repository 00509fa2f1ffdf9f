"""Claude Code session logs: ``~/.claude/projects/<slug>/<session>.jsonl`` and ``claude -p`` output.

What the log looks like (and what this reader relies on):

- one JSON object per line; ``type`` ``user`` and ``assistant`` lines carry ``message`` in the
  Anthropic Messages shape, usually **one content block per line**; the lines of one assistant
  reply share ``message.id``;
- in session logs ``uuid``/``parentUuid`` link the lines into a tree (retries and edits make
  branches; ``progress`` and ``system`` lines sit in the chain too); a compaction starts a new root
  (``system``/``compact_boundary`` with ``parentUuid: null``) followed by a user line with
  ``isCompactSummary``; a ``microcompact_boundary`` names tool results whose content was cleared
  from the context; lines with ``isSidechain`` belong to a subagent, whose own log may also sit in
  ``<session>/subagents/agent-*.jsonl``;
- ``claude -p --output-format stream-json`` output has no ``parentUuid``: it starts with a
  ``system``/``init`` event (session id, tools offered) and **no prompt line**; lines whose
  ``parent_tool_use_id`` is set are a subagent's, run by the Task/Agent call of that id, and are
  interleaved with the main conversation; several runs appended to one file are several sessions,
  each with its own ``init``;
- other line types (``summary``, ``file-history-snapshot``, ``progress``, ``result``, ...) hold no
  conversation: they are counted by kind (``Ignored``), and a type this reader does not know is
  counted as unrecognised rather than silently dropped.

Every assistant reply that calls tools is a decision point: its history is the chain of lines from
the tree's root (or the last compaction) to the reply, exactly what Claude saw.  Stream-json lines
are read in file order, one conversation per session and per subagent.

The log holds no tool schemas: they come from a tool catalog (one for Claude Code's built-in tools
ships with tooldistill; ``--catalog`` adds MCP tools).  A tool named by neither the catalog nor an
``init`` event gets a permissive schema with ``schema_missing`` set.

One bad record costs one record: a line that cannot be read is quarantined with its number, a
reply whose trace cannot be built is quarantined, and everything else in the file is still read.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from tooldistill.readers.anthropic import KNOWN_BLOCKS as ANTHROPIC_BLOCKS
from tooldistill.readers.anthropic import SERVER_RESULT_SUFFIX, blocks_to_messages, tool_call_from_block
from tooldistill.readers.base import (
    Ignored,
    Quarantined,
    ReadContext,
    SourceFile,
    count_ignored,
    excerpt,
    iter_json_lines,
)
from tooldistill.schema import Message, ToolCall, ToolSpec, Trace, validate_trace

#: Content blocks this reader keeps: every type the Messages API converter reads.
KNOWN_BLOCKS = ANTHROPIC_BLOCKS
CALL_BLOCKS = {"tool_use", "server_tool_use", "mcp_tool_use"}
#: Tools whose calls start a subagent; their ``prompt`` argument is the subagent's first message.
SUBAGENT_TOOLS = {"Task", "Agent"}

#: Line types that hold no conversation, left out on purpose (counted as ``Ignored``, known).
SKIPPED_TYPES = frozenset(
    {
        "progress",
        "attachment",
        "permission-mode",
        "last-prompt",
        "custom-title",
        "agent-name",
        "mode",
        "summary",
        "file-history-snapshot",
        "queue-operation",
        "result",
        # stream-json events besides the messages (partial messages, tool progress, auth)
        "stream_event",
        "tool_progress",
        "auth_status",
        # today's session logs (Claude Code 2.1.3xx): bookkeeping of the CLI's own, no conversation
        "tools-used",
        "atis-latch",
        "cost-state",
    }
)
#: The lines that record each request sent to the API (Claude Code 2.1.3xx): read, then used to
#: rebuild the exact request behind a reply (``requestRef``).
REQUEST_TYPES = frozenset({"api-request-shape", "api-request", "api-request-blob"})
#: The system block Claude Code puts first: a per-request billing header, not instructions.
BILLING_HEADER = "x-anthropic-billing-header"
#: ``system`` subtypes this reader knows; ``init`` and the two boundaries are also used.
SYSTEM_SUBTYPES = frozenset(
    {
        "init",
        "compact_boundary",
        "microcompact_boundary",
        "api_error",
        "turn_duration",
        "local_command",
        "stop_hook_summary",
        "away_summary",
        "informational",
        "status",
        "hook_response",
    }
)

#: The user message of a conversation whose prompt is nowhere to be found.
PROMPT_PLACEHOLDER = "[prompt not recorded]"
#: What a tool result named by a ``microcompact_boundary`` reads as in later histories.
CLEARED_RESULT = "[tool result cleared by microcompact]"
PROMPT_SIDECAR_SUFFIX = ".prompt.txt"


# ---------------------------------------------------------------------------------------------
# Tool catalog
# ---------------------------------------------------------------------------------------------


def mcp_tool_name(server: str, tool: str) -> str:
    """The name Claude Code gives an MCP tool: ``mcp__<server>__<tool>``.

    Characters other than letters, digits, ``_`` and ``-`` in the server name become ``_``, as
    Claude Code does, so a catalog written from ``tools/list`` matches the names in the log.
    """
    return f"mcp__{re.sub(r'[^A-Za-z0-9_-]', '_', server)}__{tool}"


def load_catalog(path: str | None, context: ReadContext | None = None) -> dict[str, ToolSpec]:
    """Tool specs by name: the built-in Claude Code catalog, plus (overriding) a catalog file.

    A catalog is JSON: ``{"tools": [...]}`` or a bare list; each tool has ``name``, ``description``
    and ``parameters`` (or Anthropic's ``input_schema``, or MCP's ``inputSchema``).  An MCP
    ``tools/list`` result works as it is (also inside its JSON-RPC ``result``); a top-level
    ``"server": "name"`` names the server, and its tools become ``mcp__<server>__<tool>``.  Raises
    ``ValueError`` for an unreadable catalog: without it the whole ingest would be wrong.
    """
    key = f"catalog:{path}"
    if context is not None and key in context.cache:
        return context.cache[key]  # type: ignore[no-any-return]
    try:
        if path is None:
            text = resources.files("tooldistill.catalogs").joinpath("claude_code.json").read_text("utf-8")
        else:
            from tooldistill.store import StoreError, read_file  # the store's S3 settings

            try:
                text = read_file(path).decode("utf-8")
            except StoreError as error:
                raise OSError(str(error)) from error
        raw = json.loads(text)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read tool catalog {path}: {error}") from error
    label = path or "built-in"
    server: Any = None
    if isinstance(raw, dict):
        server = raw.get("server")
        body = raw["result"] if isinstance(raw.get("result"), dict) else raw  # a JSON-RPC response
        items = body.get("tools", [])
    else:
        items = raw
    if server is not None and not (isinstance(server, str) and server):
        raise ValueError(f"tool catalog {label}: 'server' must be a non-empty string")
    if not isinstance(items, list):
        raise ValueError(f"tool catalog {label}: 'tools' must be a list")
    # A user catalog adds to the built-in one (its entries win), so naming your MCP tools does not
    # turn Bash and Read into unknown tools.
    catalog: dict[str, ToolSpec] = {} if path is None else dict(load_catalog(None, context))
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise ValueError(f"tool catalog {label}: every tool needs a name, got {str(item)[:80]}")
        name = item["name"]
        if server and not name.startswith("mcp__"):
            name = mcp_tool_name(server, name)
        parameters = _schema_of(item)
        catalog[name] = ToolSpec(
            name=name,
            description=str(item.get("description") or ""),
            parameters=parameters if parameters is not None else {"type": "object"},
        )
    if context is not None:
        context.cache[key] = catalog
    return catalog


def _schema_of(tool: dict[str, Any]) -> dict[str, Any] | None:
    """A tool definition's JSON Schema under any of the names Anthropic, OpenAI-likes and MCP use."""
    for key in ("parameters", "input_schema", "inputSchema"):
        schema = tool.get(key)
        if isinstance(schema, dict):
            return schema
    return None


# ---------------------------------------------------------------------------------------------
# Log lines
# ---------------------------------------------------------------------------------------------


class _BadLine(ValueError):
    """A line that cannot be part of any conversation; the message is the quarantine reason."""


@dataclass
class _Line:
    """One user/assistant line of the log, already converted to neutral messages."""

    number: int
    node: str  # its uuid, or ``line:<n>`` when it has none
    parent: str | None
    role: str
    message_id: str | None
    record: dict[str, Any]
    session: str | None
    #: ``parent_tool_use_id`` of a stream-json subagent line; None in the main conversation
    thread: str | None
    stream: bool  # linked in file order (no ``parentUuid``)
    init: int | None  # index of the ``init`` event in force for this line's session
    messages: list[Message] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)
    callers: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class _Link:
    """Where a line sits: its node id, its parent node, its session and its thread."""

    node: str
    parent: str | None
    session: str | None
    thread: str | None
    stream: bool
    has_uuid: bool


@dataclass(frozen=True)
class _Microcompact:
    number: int
    node: str
    parent: str | None
    session: str | None
    stream: bool
    tool_ids: frozenset[str]


def _known_content(content: Any) -> tuple[Any, list[str]]:
    """The content with unknown block types removed, and the unknown types."""
    if not isinstance(content, list):
        return content, []
    kept: list[Any] = []
    unknown: list[str] = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if isinstance(kind, str) and (kind in KNOWN_BLOCKS or kind.endswith(SERVER_RESULT_SUFFIX)):
            kept.append(block)
        else:
            unknown.append(str(kind) if kind is not None else type(block).__name__)
    return kept, unknown


def _optional_str(record: dict[str, Any], key: str, label: str | None = None) -> str | None:
    """``record[key]`` when it is a string or absent/null; a ``_BadLine`` for any other type."""
    value = record.get(key)
    if value is None or isinstance(value, str):
        return value
    raise _BadLine(f"{label or key} is a {type(value).__name__}, not a string")


def _check_ids(blocks: list[dict[str, Any]]) -> None:
    """Calls need a name and results must name their call by a string id: a block that breaks
    this cannot be read as what it says (the shared converter would quietly make do)."""
    for block in blocks:
        kind = block.get("type")
        if kind in CALL_BLOCKS:
            if not isinstance(block.get("name"), str) or not block["name"]:
                raise _BadLine(f"{kind} block without a name")
            if not isinstance(block.get("id"), (str, type(None))):
                raise _BadLine(f"{kind} block id is a {type(block['id']).__name__}, not a string")
        elif kind == "tool_result" and not isinstance(block.get("tool_use_id"), (str, type(None))):
            raise _BadLine(f"tool_result's tool_use_id is a {type(block['tool_use_id']).__name__}")


def _str_or_none(record: dict[str, Any], key: str) -> str | None:
    value = record.get(key)
    return value if isinstance(value, str) else None


def _record_excerpt(record: Any, context: ReadContext) -> str:
    """The redacted excerpt of a parsed record, whatever it holds (even nested too deep to dump)."""
    try:
        text = json.dumps(record, ensure_ascii=False, default=str)
    except (RecursionError, ValueError, TypeError):
        text = repr(record)[:100_000]
    return excerpt(text, context.redactor)


class _Log:
    """The lines of one file, linked into conversations, and everything needed to build traces.

    Every ``add`` either records a line or raises ``_BadLine``/another error for that line only;
    state is changed only after the line has been read in full, so a bad line leaves no half of
    itself behind.
    """

    def __init__(self, source: SourceFile, context: ReadContext) -> None:
        self.source = source
        self.context = context
        self.by_node: dict[str, _Line] = {}
        self.parents: dict[str, str | None] = {}  # every linked node, message or not
        self.replies: dict[str, list[_Line]] = {}  # reply key -> its lines, in file order
        self.bad_nodes: dict[str, int] = {}  # node of a quarantined line -> line number
        self.bad_replies: dict[str, int] = {}  # message id of a quarantined line -> line number
        self.bad_unknown_replies: dict[str, int] = {}  # quarantined assistant lines, id unknown
        self.inits: list[list[Any]] = []
        self.session_init: dict[str | None, int] = {}
        self.current_session: str | None = None
        self.thread_last: dict[tuple[str | None, str | None], str] = {}
        self.compactions: set[str] = set()
        self.microcompacts: list[_Microcompact] = []
        self.subagent_prompts: dict[str, str] = {}  # Task/Agent call id -> its prompt argument
        self.ignored: Counter[str] = Counter()
        self.unrecognized: Counter[str] = Counter()
        # the requests as sent (REQUEST_TYPES): shapes by hash, requests by id, blobs by hash
        self.shapes: dict[str, dict[str, Any]] = {}
        self.api_requests: dict[str, dict[str, Any]] = {}
        self.blobs: dict[str, dict[str, Any]] = {}
        # messages of the transcript by the same content hash (a request's tail names them too)
        self.transcript_blobs: dict[str, dict[str, Any]] = {}
        self.reply_content: dict[str, list[Any]] = {}  # message id -> its blocks so far

    # -- reading -------------------------------------------------------------------------------

    def add(self, number: int, record: dict[str, Any]) -> Iterator[Quarantined]:
        """Record one line; yields notes about it (an unknown block) while still using it."""
        kind = record.get("type")
        if kind in ("user", "assistant"):
            yield from self._add_message(number, record, str(kind))
        elif kind == "system":
            self._add_system(number, record)
        elif kind in REQUEST_TYPES:
            self._add_request_part(str(kind), record)
            self.ignored[str(kind)] += 1
        elif isinstance(kind, str) and kind in SKIPPED_TYPES:
            self._link_other(number, record)
            self.ignored[kind] += 1
        elif "message" in record:
            # A conversation line whose type got lost: dropping it silently would cut a reply.
            raise _BadLine(f"line with a message but type {str(kind)[:40]!r}")
        else:
            self._link_other(number, record)
            self.unrecognized[kind[:60] if isinstance(kind, str) and kind else "no type"] += 1

    def mark_bad(self, number: int, record: dict[str, Any]) -> None:
        """Remember a quarantined line so that traces through it are flagged, not silently cut."""
        # Broken linking fields are read as absent: the line still becomes a node, so the
        # conversation it sat in is flagged as having lost a line instead of silently closing up.
        link = self._link(number, record, strict=False)
        message = record.get("message")
        message_id = message.get("id") if isinstance(message, dict) else None
        # A stream-json line that is not a message belongs to no conversation; in a session log
        # every line is a node of the tree, and one left out would cut the chains through it.
        if not link.stream or record.get("type") in ("user", "assistant"):
            self._attach(link)
            self.bad_nodes[link.node] = number
            if record.get("type") == "assistant" and not isinstance(message_id, str):
                self.bad_unknown_replies[link.node] = number
        if isinstance(message_id, str):
            self.bad_replies.setdefault(message_id, number)

    def _link(self, number: int, record: dict[str, Any], strict: bool = True) -> _Link:
        """Where the line sits.  Session logs link by ``parentUuid``; stream-json by file order
        within its session and thread, so subagent lines never enter the main conversation.

        ``strict`` raises ``_BadLine`` for a linking field of the wrong type; otherwise such a
        field counts as absent.
        """
        text = _optional_str if strict else _str_or_none
        uuid = text(record, "uuid")
        session = text(record, "session_id") or text(record, "sessionId") or self.current_session
        thread = text(record, "parent_tool_use_id")
        node = uuid or f"line:{number}"
        if "parentUuid" in record:
            return _Link(node, text(record, "parentUuid"), session, thread, False, bool(uuid))
        return _Link(node, self.thread_last.get((session, thread)), session, thread, True, bool(uuid))

    def _attach(self, link: _Link) -> None:
        self.parents.setdefault(link.node, link.parent)
        if link.stream:
            self.thread_last[(link.session, link.thread)] = link.node

    def _link_other(self, number: int, record: dict[str, Any]) -> None:
        """Session-log lines without a message still link the tree (a tool result's parent may be
        a ``progress`` line); in stream-json they are not part of any conversation."""
        if "parentUuid" in record:
            link = self._link(number, record)
            if link.has_uuid:
                self._attach(link)

    def _remember_transcript_message(self, role: str, message_id: str | None, content: Any) -> None:
        """A transcript message under its content hash: a request's ``tail`` names messages the
        transcript holds (the call and its result) without writing them again as blobs.  An
        assistant reply written one block per line is hashed as it grows."""
        if role == "assistant" and message_id and isinstance(content, list):
            blocks = self.reply_content.setdefault(message_id, [])
            blocks.extend(content)
            content = list(blocks)
        message = {"role": role, "content": content}
        self.transcript_blobs[content_digest(message)] = message

    def _add_request_part(self, kind: str, record: dict[str, Any]) -> None:
        """One piece of the request log: a shape (system prompt and tools), a request (the one
        before it, how many of its messages are kept, the blobs appended), or a message blob."""
        if kind == "api-request-shape":
            key, shape = record.get("shapeHash"), record.get("shape")
            if not isinstance(key, str) or not isinstance(shape, dict):
                raise _BadLine("api-request-shape without a shapeHash and a shape object")
            if not isinstance(shape.get("system", []), list | str) or not isinstance(
                shape.get("tools", []), list
            ):
                raise _BadLine("api-request-shape's system or tools is not a list")
            if content_digest(shape) != key:
                self.ignored["request hash mismatch (used as written)"] += 1
            self.shapes[key] = shape
        elif kind == "api-request":
            key, keep, tail = record.get("id"), record.get("keep", 0), record.get("tail", [])
            if not isinstance(key, str) or not isinstance(keep, int) or keep < 0:
                raise _BadLine("api-request without an id or with a bad keep")
            if not isinstance(tail, list) or not all(isinstance(h, str) for h in tail):
                raise _BadLine("api-request's tail is not a list of blob hashes")
            if record.get("base") is not None and not isinstance(record.get("base"), str):
                raise _BadLine("api-request's base is not a request id")
            self.api_requests[key] = record
        else:
            key, message = record.get("hash"), record.get("message")
            if (
                not isinstance(key, str)
                or not isinstance(message, dict)
                or not isinstance(message.get("role"), str)
            ):
                raise _BadLine("api-request-blob without a hash and a message with a role")
            if content_digest(message) != key:
                self.ignored["request hash mismatch (used as written)"] += 1
            self.blobs[key] = message

    def _add_system(self, number: int, record: dict[str, Any]) -> None:
        subtype = record.get("subtype")
        kind = f"system/{subtype[:60]}" if isinstance(subtype, str) and subtype else "system"
        if subtype == "init":
            self._add_init(record)
        elif subtype == "compact_boundary":
            link = self._link(number, record)
            if link.stream:  # a new root for the session's main conversation
                link = _Link(link.node, None, link.session, None, True, link.has_uuid)
            self._attach(link)
            self.compactions.add(link.node)
        elif subtype == "microcompact_boundary":
            self._add_microcompact(number, record)
        else:
            self._link_other(number, record)
        if subtype in SYSTEM_SUBTYPES:
            self.ignored[kind] += 1
        else:
            self.unrecognized[kind] += 1

    def _add_init(self, record: dict[str, Any]) -> None:
        """A new session starts; its tools hold for its lines.  The session switch is kept even
        when the tools are unreadable (its lines then offer the catalog)."""
        session = _optional_str(record, "session_id") or _optional_str(record, "sessionId")
        self.current_session = session
        tools = record.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise _BadLine(f"init event's tools is a {type(tools).__name__}, not a list")
        if tools is not None:
            self.inits.append(tools)
            self.session_init[session] = len(self.inits) - 1

    def _add_microcompact(self, number: int, record: dict[str, Any]) -> None:
        details = record.get("microcompactMetadata")
        ids = record.get("compactedToolIds")
        if ids is None and isinstance(details, dict):
            ids = details.get("compactedToolIds")
        if ids is None:
            ids = []
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise _BadLine("microcompact_boundary's compactedToolIds is not a list of strings")
        link = self._link(number, record)
        if link.stream:
            link = _Link(link.node, link.parent, link.session, None, True, link.has_uuid)
        self._attach(link)
        self.microcompacts.append(
            _Microcompact(number, link.node, link.parent, link.session, link.stream, frozenset(ids))
        )

    def _add_message(self, number: int, record: dict[str, Any], role: str) -> Iterator[Quarantined]:
        redactor = self.context.redactor
        link = self._link(number, record)
        message = record.get("message")
        if not isinstance(message, dict):
            raise _BadLine(f"{role} line without a message object")
        message_id = _optional_str(message, "id", "message.id")
        raw_content = message.get("content")
        if raw_content is not None and not isinstance(raw_content, (str, list)):
            raise _BadLine(f"message content is a {type(raw_content).__name__}, not text or blocks")
        content, unknown = _known_content(raw_content)
        blocks = content if isinstance(content, list) else []
        _check_ids(blocks)
        call_blocks = [b for b in blocks if b.get("type") in CALL_BLOCKS] if role == "assistant" else []
        messages = blocks_to_messages(role, content, redactor, lambda kind: None)
        calls = [tool_call_from_block(block, redactor) for block in call_blocks]
        callers = [redactor.value(block.get("caller")) for block in call_blocks]
        if link.has_uuid and link.node in self.by_node:
            self.ignored["duplicate line"] += 1  # the same line written twice (resumed sessions)
            return
        # -- nothing below can fail: the line is recorded whole or not at all --
        if unknown:
            yield Quarantined(
                self.source.uri,
                number,
                f"unknown content block type {unknown[0]!r}",
                _record_excerpt(message, self.context),
            )
        session = link.session
        line = _Line(
            number=number,
            node=link.node,
            parent=link.parent,
            role=role,
            message_id=message_id,
            record=record,
            session=session,
            thread=link.thread,
            stream=link.stream,
            init=self.session_init.get(session) if link.stream else None,
            messages=messages,
            calls=calls,
            callers=callers,
        )
        self._attach(link)
        self.by_node[line.node] = line
        if role == "assistant":
            self.replies.setdefault(message_id or line.node, []).append(line)
        if raw_content is not None:
            self._remember_transcript_message(role, message_id, raw_content)
        for call in calls:
            prompt = call.arguments.get("prompt")
            if call.name in SUBAGENT_TOOLS and call.id and isinstance(prompt, str) and prompt:
                self.subagent_prompts[call.id] = prompt


def read_claude_code(source: SourceFile, context: ReadContext) -> Iterator[Trace | Quarantined | Ignored]:
    """Traces for every assistant reply that calls tools in one Claude Code log."""
    log = _Log(source, context)
    for item in iter_json_lines(source, context):
        if isinstance(item, Quarantined):
            yield item
            continue
        number, record = item
        try:
            notes = list(log.add(number, record))
        except Exception as error:  # RecursionError included: a line nested too deep to walk
            reason = str(error) if isinstance(error, _BadLine) else f"cannot read line: {_error(error)}"
            notes = [Quarantined(source.uri, number, reason, _record_excerpt(record, context))]
            log.mark_bad(number, record)
        yield from notes

    builder = _TraceBuilder(log)
    for key, reply_lines in log.replies.items():
        try:
            result = builder.build(key, reply_lines)
        except Exception as error:
            result = Quarantined(source.uri, reply_lines[0].number, f"cannot build trace: {_error(error)}")
        if result is not None:
            yield result
    if builder.fallbacks:
        log.ignored["logged request incomplete (transcript used)"] += builder.fallbacks
    yield from count_ignored(source, dict(log.ignored), True)
    yield from count_ignored(source, dict(log.unrecognized), False)


def _error(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error)[:200]}"


# ---------------------------------------------------------------------------------------------
# Traces
# ---------------------------------------------------------------------------------------------


@dataclass
class _Chain:
    """The lines before a reply, root first, and what the walk found on the way."""

    lines: list[_Line]
    nodes: set[str]
    gaps: list[int]  # line numbers of quarantined lines the history skips
    missing_parent: bool  # the walk ended at a parent that is not in the file


def content_digest(value: Any) -> str:
    """How Claude Code names a message blob or a request shape: the SHA-256 of its JSON with
    sorted keys, no spaces and non-ASCII characters as they are (checked on 2.1.328's logs)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class _ExactRequest:
    """A request rebuilt from the log's request lines: what Claude was sent for one reply."""

    messages: list[Message]
    tools: list[ToolSpec]
    metadata: dict[str, Any]


def _input_schema(tool: dict[str, Any]) -> dict[str, Any]:
    schema = tool.get("input_schema")
    return schema if isinstance(schema, dict) else {"type": "object"}


def _system_text(value: Any) -> str:
    """A system prompt (a string or text blocks) as one text, without the billing header block."""
    if isinstance(value, str):
        return value
    parts = [
        str(block.get("text") or "")
        for block in value or []
        if isinstance(block, dict)
        and block.get("type") == "text"
        and not str(block.get("text") or "").startswith(BILLING_HEADER)
    ]
    # blocks follow each other as written (as vLLM's Messages translation renders them): the CLI
    # puts its own line breaks at the start of a block
    return "".join(parts)


class _TraceBuilder:
    """Turns the replies of a ``_Log`` into traces; caches what several traces share."""

    def __init__(self, log: _Log) -> None:
        self.log = log
        self.context = log.context
        self.catalog = load_catalog(self.context.options.catalog, self.context)
        self.tools: dict[int | None, tuple[list[ToolSpec], set[str]]] = {}
        self.reply_messages: dict[str, list[Message]] = {}
        self._file_prompt: tuple[str | None, str] | None = None
        self.exact: dict[str, _ExactRequest | str] = {}
        #: Replies whose logged request had a missing link (rebuilt from the transcript instead).
        self.fallbacks = 0

    def build(self, key: str, reply_lines: list[_Line]) -> Trace | Quarantined | None:
        log = self.log
        calls = [call for line in reply_lines for call in line.calls]
        if not calls:
            return None
        first = reply_lines[0]
        uri = log.source.uri
        if key in log.bad_replies:
            return Quarantined(
                uri, first.number, f"a line of this reply was quarantined (line {log.bad_replies[key]})"
            )
        for line in reply_lines:
            lost = log.bad_unknown_replies.get(line.parent or "")
            if lost is not None:
                return Quarantined(
                    uri, first.number, f"the reply may have lost the quarantined assistant line {lost}"
                )
        chain = self._chain(first.parent)
        messages: list[Message] = []
        seen_replies: set[str] = set()
        after_compaction = bool(chain.nodes & log.compactions)
        for line in chain.lines:
            if line.role == "assistant":
                reply_key = line.message_id or line.node
                if reply_key not in seen_replies:
                    seen_replies.add(reply_key)
                    messages.extend(self._reply_messages(reply_key, line))
            else:
                after_compaction = after_compaction or bool(line.record.get("isCompactSummary"))
                messages.extend(line.messages)
        messages, cleared = self._clear_microcompacted(messages, first, chain)
        prompt_source = "log"
        if _needs_prompt(messages):
            prompt_source, prompt = self._prompt(first)
            messages.insert(0, Message(role="user", content=prompt))
        tools, catalog_names = self._tools(first.init)
        record = first.record
        exact = self._exact_request(record.get("requestRef"))
        request_meta: dict[str, Any] = {"request_source": "transcript", "schema_source": "catalog"}
        if isinstance(exact, _ExactRequest):
            messages, tools, catalog_names = exact.messages, exact.tools, {t.name for t in exact.tools}
            request_meta = exact.metadata
            prompt_source = "log"
        elif exact is not None:
            request_meta["request_fallback"] = exact  # why the logged request could not be used
            self.fallbacks += 1
        message = record.get("message") or {}
        reply_text = "\n".join(
            m.content for line in reply_lines for m in line.messages if m.role == "assistant" and m.content
        )
        unknown_tools = sorted({c.name for c in calls} - catalog_names)
        callers = [caller for line in reply_lines for caller in line.callers]
        metadata: dict[str, Any] = {
            "file": uri,
            "line": first.number,
            "reply_lines": [line.number for line in reply_lines],
            "session_id": first.session,
            "model": message.get("model"),
            "timestamp": record.get("timestamp"),
            "sidechain": bool(record.get("isSidechain")),
            "subagent": "/subagents/" in log.source.path or first.thread is not None,
            "parent_tool_use_id": first.thread,
            "agent_id": record.get("agentId"),
            "after_compaction": after_compaction,
            "assistant_text": reply_text,
            "unknown_tools": unknown_tools,
            "stop_reason": message.get("stop_reason"),
            "prompt_source": prompt_source,
            "prompt_missing": prompt_source == "missing",
            "history_incomplete": bool(chain.gaps) or chain.missing_parent,
            "history_gaps": chain.gaps,
            "cleared_tool_results": cleared,
            **request_meta,
        }
        if any(caller is not None for caller in callers):
            metadata["callers"] = callers  # one per reference call: who made it (direct, code)
        trace = Trace(
            source_id=str(first.message_id or f"{first.session or uri}:{first.number}"),
            source="claude_code",
            messages=messages,
            tools=_offered_tools(tools, calls),
            reference_calls=calls,
            metadata=metadata,
        )
        problem = validate_trace(trace)
        if problem:
            return Quarantined(uri, first.number, problem)
        return trace.with_id()

    def _exact_request(self, ref: Any) -> _ExactRequest | str | None:
        """The request behind a reply as the log recorded it (``requestRef``); a string says why
        it cannot be rebuilt (a missing link), None when the reply names no request (older logs)."""
        if not isinstance(ref, str):
            return None
        if ref in self.exact:
            return self.exact[ref]
        log, redactor = self.log, self.context.redactor
        chain: list[dict[str, Any]] = []
        node: str | None = ref
        while node is not None:
            request = log.api_requests.get(node)
            if request is None or len(chain) > 10_000:
                self.exact[ref] = f"request {node} is not in the file"
                return self.exact[ref]
            chain.append(request)
            node = request.get("base")
        raw: list[dict[str, Any]] = []
        for request in reversed(chain):  # oldest first: each keeps a prefix and appends its tail
            tail: list[dict[str, Any]] = []
            for digest in request.get("tail", []):
                blob = log.blobs.get(digest) or log.transcript_blobs.get(digest)
                if blob is None:
                    self.exact[ref] = f"message blob {digest[:16]} is not in the file"
                    return self.exact[ref]
                tail.append(blob)
            raw = raw[: int(request.get("keep") or 0)] + tail
        top = chain[0]
        shape = log.shapes.get(str(top.get("shapeHash")))
        if shape is None:
            self.exact[ref] = f"request shape {str(top.get('shapeHash'))[:16]} is not in the file"
            return self.exact[ref]
        messages: list[Message] = []
        system = _system_text(shape.get("system"))
        if system:
            messages.append(Message(role="system", content=redactor.text(system)))
        for item in raw:
            role = item.get("role")
            if role == "system":
                text = _system_text(item.get("content"))
                if text:
                    messages.append(Message(role="system", content=redactor.text(text)))
            else:
                messages.extend(
                    blocks_to_messages(str(role), item.get("content"), redactor, lambda kind: None)
                )
        tools = [
            ToolSpec(
                name=str(tool["name"]),
                description=redactor.text(str(tool.get("description") or "")),
                parameters=_input_schema(tool),
            )
            for tool in shape.get("tools") or []
            if isinstance(tool, dict) and isinstance(tool.get("name"), str) and tool["name"]
        ]
        found = top.get("params")
        params: dict[str, Any] = found if isinstance(found, dict) else {}
        metadata = {
            "request_source": "log",
            "schema_source": "request",
            "request_id": ref,
            "cli_version": top.get("version"),
            "requested_model": params.get("model"),
            "max_tokens": params.get("max_tokens"),
            "betas": params.get("betas") or [],
        }
        self.exact[ref] = _ExactRequest(messages, tools, metadata)
        return self.exact[ref]

    def _chain(self, start: str | None) -> _Chain:
        """Message lines from the root (or compaction) down to ``start``, in conversation order."""
        log = self.log
        lines: list[_Line] = []
        nodes: set[str] = set()
        gaps: list[int] = []
        node = start
        missing = False
        while node is not None and node not in nodes:
            if node not in log.parents:
                missing = True
                break
            nodes.add(node)
            line = log.by_node.get(node)
            if line is not None:
                lines.append(line)
            elif node in log.bad_nodes:
                gaps.append(log.bad_nodes[node])
            node = log.parents[node]
        lines.reverse()
        return _Chain(lines, nodes, sorted(gaps), missing)

    def _reply_messages(self, key: str, line: _Line) -> list[Message]:
        """One earlier reply as the assistant message Claude saw: the text of all its lines joined,
        its calls in order."""
        if key not in self.reply_messages:
            parts = [m for part in self.log.replies.get(key, [line]) for m in part.messages]
            merged: list[Message] = []
            for message in parts:
                if merged and message.role == "assistant" and merged[-1].role == "assistant":
                    previous = merged[-1]
                    text = "\n".join(t for t in (previous.content, message.content) if t)
                    merged[-1] = previous.model_copy(
                        update={"content": text, "tool_calls": [*previous.tool_calls, *message.tool_calls]}
                    )
                else:
                    merged.append(message)
            self.reply_messages[key] = merged
        return self.reply_messages[key]

    def _clear_microcompacted(
        self, messages: list[Message], first: _Line, chain: _Chain
    ) -> tuple[list[Message], list[str]]:
        """The history with tool results cleared by earlier microcompactions of this conversation.

        A boundary counts when it comes before the reply in the file and sits on the reply's
        branch: in the chain itself, or hanging off a line of it (when the next line's
        ``parentUuid`` skips the boundary).  In stream-json, the same session suffices.
        """
        cleared_ids: set[str] = set()
        for boundary in self.log.microcompacts:
            if boundary.number >= first.number:
                continue
            if boundary.stream:
                applies = first.stream and boundary.session == first.session
            else:
                applies = boundary.node in chain.nodes or (boundary.parent or "") in chain.nodes
            if applies:
                cleared_ids |= boundary.tool_ids
        if not cleared_ids:
            return messages, []
        cleared: list[str] = []
        result: list[Message] = []
        for message in messages:
            if message.role == "tool" and message.tool_call_id in cleared_ids:
                cleared.append(message.tool_call_id)
                message = message.model_copy(update={"content": CLEARED_RESULT})
            result.append(message)
        return result, cleared

    def _prompt(self, first: _Line) -> tuple[str, str]:
        """``(prompt_source, text)`` for a conversation whose history holds no user message.

        A stream-json subagent was prompted by its Task/Agent call; a stream-json main
        conversation by the ``claude -p`` prompt: the file's ``.prompt.txt`` sidecar, else the
        ``prompt`` option.  Otherwise the prompt is lost and a placeholder stands in for it.
        """
        if first.stream and first.thread is not None:
            prompt = self.log.subagent_prompts.get(first.thread)
            if prompt:
                return "parent_call", prompt
        elif first.stream:
            source, text = self._stream_prompt()
            if source is not None:
                return source, text
        return "missing", PROMPT_PLACEHOLDER

    def _stream_prompt(self) -> tuple[str | None, str]:
        if self._file_prompt is None:
            text = _read_sidecar(self.log.source)
            source: str | None = "sidecar"
            if text is None and self.context.options.prompt:
                text, source = self.context.options.prompt, "option"
            if text is None:
                self._file_prompt = (None, "")
            else:  # redacted once per file, so the secret counts are not multiplied by the traces
                self._file_prompt = (source, self.context.redactor.text(text))
        return self._file_prompt

    def _tools(self, init: int | None) -> tuple[list[ToolSpec], set[str]]:
        if init not in self.tools:
            self.tools[init] = _session_tools(None if init is None else self.log.inits[init], self.catalog)
        return self.tools[init]


def _needs_prompt(messages: list[Message]) -> bool:
    """True when no user message comes before the first reply (stream-json has no prompt line)."""
    for message in messages:
        if message.role == "user":
            return False
        if message.role == "assistant":
            return True
    return True


def _read_sidecar(source: SourceFile) -> str | None:
    """The prompt in ``<log file>.prompt.txt`` next to the log; None when there is none."""
    name = source.path.rsplit("/", 1)[-1]
    try:
        data = source.sibling(name + PROMPT_SIDECAR_SUFFIX).data
    except OSError:  # FileNotFoundError, and the S3 equivalents
        return None
    text = data.decode("utf-8", errors="replace").strip()
    return text or None


def _session_tools(
    init_tools: list[Any] | None, catalog: dict[str, ToolSpec]
) -> tuple[list[ToolSpec], set[str]]:
    """The tools offered in a session, and the names whose schema is known.

    Without an ``init`` event that is the whole catalog.  An init entry may be a name (looked up
    in the catalog) or a definition with a schema (used as it is); entries of any other shape
    name no tool and are left out.
    """
    if init_tools is None:
        return list(catalog.values()), set(catalog)
    offered: dict[str, ToolSpec] = {}
    for tool in init_tools:
        if isinstance(tool, dict) and isinstance(tool.get("name"), str) and tool["name"]:
            schema = _schema_of(tool)
            name = tool["name"]
            if schema is not None:
                offered[name] = ToolSpec(
                    name=name, description=str(tool.get("description") or ""), parameters=schema
                )
                continue
        elif isinstance(tool, str) and tool:
            name = tool
        else:
            continue
        offered[name] = catalog.get(name) or ToolSpec(name=name, schema_missing=True)
    return list(offered.values()), {t.name for t in offered.values() if not t.schema_missing}


def _offered_tools(tools: list[ToolSpec], calls: list[ToolCall]) -> list[ToolSpec]:
    """The session's tools plus a permissive spec for each called tool not among them."""
    names = {t.name for t in tools}
    extra = [ToolSpec(name=c.name, schema_missing=True) for c in calls if c.name not in names]
    unique_extra = list({t.name: t for t in extra}.values())
    return [*tools, *unique_extra]
