"""The context policy: fit a request into the student's window before the student sees it.

Real Claude Code decision points are long (a median of about 17k tokens, a third over 32k) and a
small student's window is not (8,192 tokens for the CPU student).  Sending such a trace as it is
gets an HTTP 400 and measures nothing.  Every place the student sees a trace (evaluate, the
optimizer's metric calls, the training examples of a finetune phase) passes its request through
one ``Fitter``, so the student is measured and trained on what it would be served.

What is kept, and in what order the rest is cut:

1. always kept: the system prompt (with the prompt artifact's text and demos), the tools, and the
   latest user request's own words;
2. cut first: **old tool results** (older than the ``keep_recent`` most recent messages), oldest
   first, each shortened to its head plus a visible marker ``[… N tokens cut …]``;
3. then the other old messages (assistant text, long string arguments of old calls, earlier user
   text);
4. then the recent messages other than tool results and the latest user request: the long string
   arguments of recent calls (a ``Write`` of a whole file, the strings of an ``Edit``), assistant
   text, a user message that is not the latest; oldest first, only as far as needed;
5. then the recent tool results, oldest first, shortened only as far as needed (the result just
   before the decision is cut last);
6. then whole old turns (an assistant message goes with the tool results that answer it), oldest
   first, each run of them leaving a marker on the message after it.  Shortened old turns are
   cheap and say what was already done, so they go only when nothing else is left to cut;
7. last, the reminders Claude Code puts into the latest user request (``<system-reminder>``
   blocks: CLAUDE.md, a changed file, the todo list), the longest first; the user's own words stay.

Text and string arguments keep their head and tail (``head_tokens`` and half as many) around the
marker, tool results only their head.  A string argument is cut inside the arguments (at any
depth: ``MultiEdit``'s edits too), so the arguments stay a JSON object with the same keys.

A request that still does not fit (the system prompt, tools and latest request alone exceed the
window) raises ``DoesNotFit``: the caller skips the trace with that reason; it is never sent to
become an endpoint error.  Each fit records what it cut (``Fit.record``).

Tokens are counted the way the student counts them: the request rendered by the student's chat
template (tools included) and tokenized by its tokenizer.  Without a tokenizer the count is the
rendered JSON's UTF-8 byte length, an upper bound for byte-level BPE tokenizers (every token
covers at least one byte): it cuts more than needed, never too little.  The same bound lets a
short request through without tokenizing it at all.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tooldistill.paths import expand_path

#: Template text around each message and around the tool list, over-estimated, for the byte bound.
_BYTES_PER_MESSAGE = 48
_BYTES_FIXED = 512
#: The marker left where text was cut: at the end of a tool result's head, or between the head
#: and tail of other text; a shorter one inside a call's string arguments.
_MARKER = "[… {n:,} tokens cut by tooldistill's context policy …]"
_ARGUMENT_MARKER = "[… {n:,} tokens cut …]"
#: What Claude Code adds to a user message besides the user's words (CLAUDE.md, changed files).
_REMINDER = re.compile(r"<system-reminder>(.*?)</system-reminder>", re.S)


class ContextPolicy(BaseModel):
    """How a request is fitted into the student's window (``window: null`` fits nothing)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: The student's context length in tokens (vLLM's ``max_model_len``); None: no policy.
    window: int | None = Field(default=None, ge=256)
    #: A local folder (or cached name) of the student's tokenizer and chat template; None counts
    #: UTF-8 bytes, an upper bound.
    tokenizer: str | None = None
    #: The most recent messages kept whole for as long as anything older can be cut.
    keep_recent: int = Field(default=4, ge=0)
    #: Tokens a shortened message keeps of its beginning.
    head_tokens: int = Field(default=96, ge=0)
    #: Tokens kept free besides the request's ``max_tokens``.
    margin: int = Field(default=16, ge=0)


class DoesNotFit(ValueError):
    """Even with everything cuttable cut, the request is longer than the window."""

    def __init__(self, tokens: int, budget: int, window: int) -> None:
        super().__init__(
            f"does not fit the context window: {tokens:,} prompt tokens after every cut (the system "
            f"prompt, tools and latest request), {budget:,} allowed ({window:,} window less the answer)"
        )
        self.tokens, self.budget, self.window = tokens, budget, window


@dataclass
class Fit:
    """A request fitted into the window and what was cut to get there."""

    request: dict[str, Any]
    #: Prompt tokens before and after (None when a cheap bound showed the request fits as it is).
    tokens_before: int | None = None
    tokens_after: int | None = None
    #: One entry per message changed: ``index`` (in the original request), ``role``, ``action``
    #: (``shortened`` or ``dropped``), ``tokens`` (its tokens before).
    changes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def cut(self) -> bool:
        return bool(self.changes)

    def record(self) -> dict[str, Any] | None:
        """What was cut, for the evaluation row (None when nothing was)."""
        if not self.changes:
            return None
        assert self.tokens_before is not None and self.tokens_after is not None
        return {
            "tokens_before": self.tokens_before,
            "tokens_after": self.tokens_after,
            "share_cut": round(1 - self.tokens_after / self.tokens_before, 4) if self.tokens_before else 0.0,
            "shortened": sum(c["action"] == "shortened" for c in self.changes),
            "dropped": sum(c["action"] == "dropped" for c in self.changes),
            "changes": self.changes,
        }


_TOKENIZERS: dict[str, Any] = {}
_LOCK = threading.Lock()


def load_tokenizer(name: str) -> Any:
    """The tokenizer of a local model folder (or a name in the local Hugging Face cache), loaded
    once per process; nothing is downloaded."""
    with _LOCK:
        if name not in _TOKENIZERS:
            try:
                from transformers import AutoTokenizer

                _TOKENIZERS[name] = AutoTokenizer.from_pretrained(expand_path(name), local_files_only=True)
            except Exception as error:  # transformers raises many kinds for a missing or bad folder
                raise ValueError(f"cannot load the student's tokenizer from {name}: {error}") from None
        return _TOKENIZERS[name]


def byte_bound(request: dict[str, Any]) -> int:
    """An upper bound of the request's prompt tokens for any byte-level BPE tokenizer."""
    messages = request.get("messages") or []
    text = json.dumps([messages, request.get("tools") or []], ensure_ascii=False)
    return len(text.encode("utf-8")) + _BYTES_PER_MESSAGE * len(messages) + _BYTES_FIXED


class Fitter:
    """Fits requests into one window with one tokenizer (thread-safe: it keeps no request state)."""

    def __init__(self, policy: ContextPolicy, tokenizer: Any | None = None) -> None:
        if policy.window is None:
            raise ValueError("a context policy needs the student's window (context.window)")
        self.policy = policy
        self.window = policy.window
        self.tokenizer = tokenizer if tokenizer is not None else (
            load_tokenizer(policy.tokenizer) if policy.tokenizer else None
        )  # fmt: skip

    # counting -------------------------------------------------------------------------------

    def count(self, request: dict[str, Any]) -> int:
        """The request's prompt tokens as the student counts them (its template and tokenizer)."""
        if self.tokenizer is None:
            return byte_bound(request)
        text = self.tokenizer.apply_chat_template(
            request["messages"], tools=request.get("tools"), add_generation_prompt=True, tokenize=False
        )
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _text_tokens(self, text: str) -> int:
        if self.tokenizer is None:
            return len(text.encode("utf-8"))
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _cut_text(self, text: str, want: int, marker: str, tail: bool = False) -> tuple[str, int] | None:
        """``text`` shortened by about ``want`` tokens (keeping at least ``head_tokens`` of its
        start, and with ``tail`` half as many of its end) with ``marker`` naming the tokens cut, and
        the tokens saved; None when not worth it.  Tokenized once; text that cannot hold more than
        what is kept (its bytes bound its tokens) is not tokenized at all."""
        head = self.policy.head_tokens
        end = head // 2 if tail else 0
        if len(text.encode("utf-8")) <= head + end + 24:
            return None
        if self.tokenizer is None:
            raw = text.encode("utf-8")
            tokens = len(raw)
            keep = max(head + end, tokens - want)
            if tokens - keep <= 24:
                return None
            start = raw[: keep - end].decode("utf-8", errors="ignore")
            finish = raw[tokens - end :].decode("utf-8", errors="ignore") if end else ""
        else:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            tokens = len(ids)
            keep = max(head + end, tokens - want)
            if tokens - keep <= 24:  # not worth a marker
                return None
            start = str(self.tokenizer.decode(ids[: keep - end]))
            finish = str(self.tokenizer.decode(ids[tokens - end :])) if end else ""
        return f"{start}{marker.format(n=tokens - keep)}{finish}", tokens - keep - 16

    # fitting --------------------------------------------------------------------------------

    def budget(self, request: dict[str, Any], reserve: int | None = None) -> int:
        """Prompt tokens allowed: the window less the answer (``reserve``, default ``max_tokens``)."""
        answer = int(request.get("max_tokens") or 0) if reserve is None else reserve
        return self.window - answer - self.policy.margin

    def fit(self, request: dict[str, Any], reserve: int | None = None) -> Fit:
        """``request`` fitted into the window (the original is not changed); raises ``DoesNotFit``."""
        budget = self.budget(request, reserve)
        if byte_bound(request) <= budget:
            return Fit(request)
        before = self.count(request)
        if before <= budget:
            return Fit(request, before, before)
        fitted = copy.deepcopy(request)
        messages: list[dict[str, Any]] = fitted["messages"]
        origin = list(range(len(messages)))  # original index of each message, across drops
        changes: list[dict[str, Any]] = []
        total, exact = before, True
        steps = (
            self._old_tool_results,
            self._old_messages,
            self._recent_messages,
            self._recent_tool_results,
            self._old_turns,
            self._latest_request_reminders,
        )
        for step in steps:
            for _ in range(4):  # rounds: the per-message estimate can differ from the template's count
                over = total - budget
                if over <= 0:
                    break
                saved = step(messages, origin, over, changes)
                if saved <= 0:
                    break
                # cut on the estimate; count exactly (the whole template) once it says "fits" or
                # nearly: it counts a cut string as it is, and a template renders arguments as
                # escaped JSON (more tokens), so more is often saved than it says; without the
                # count a later step would cut what need not be
                total, exact = total - saved, False
                if total - budget <= (before - total) // 8:
                    total, exact = self.count(fitted), True
            if total <= budget and exact:
                return Fit(fitted, before, total, changes)
        if not exact:
            total = self.count(fitted)
            if total <= budget:
                return Fit(fitted, before, total, changes)
        raise DoesNotFit(total, budget, self.window)

    # the steps: each cuts about ``over`` tokens and returns the tokens it saved (an estimate) ----

    def _protected(self, messages: list[dict[str, Any]]) -> set[int]:
        """Positions never cut: the system prompt and the latest user request."""
        keep = {i for i, m in enumerate(messages) if m.get("role") == "system"}
        users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
        if users:
            keep.add(users[-1])
        return keep

    def _recent_start(self, messages: list[dict[str, Any]]) -> int:
        return max(0, len(messages) - self.policy.keep_recent)

    def _shorten(
        self,
        messages: list[dict[str, Any]],
        origin: list[int],
        positions: list[int],
        over: int,
        changes: list[dict[str, Any]],
    ) -> int:
        """Shorten the messages at ``positions`` in that order until about ``over`` tokens are cut."""
        total_saved = 0
        # asked a little over: the marker costs tokens, and tokens counted one message at a time
        # differ slightly from the whole rendered request's
        marker_cost = 48
        for position in positions:
            if over <= 0:
                break
            message = messages[position]
            # a call's arguments before the text around it: a file the assistant wrote says less
            # about its next step than what it wrote about it
            saved = self._shorten_arguments(message, over + marker_cost)
            saved += self._shorten_content(message, over - saved + marker_cost)
            if saved > 0:
                total_saved += saved
                over -= saved
                _record_shortened(changes, origin[position], message)
        return total_saved

    def _shorten_content(self, message: dict[str, Any], want: int) -> int:
        content = message.get("content")
        if want <= 0 or not isinstance(content, str) or not content:
            return 0
        if message.get("role") == "tool":  # a result's head says what it is
            cut = self._cut_text(content, want, "\n" + _MARKER)
        else:  # a message's request or conclusion is as often at its end
            cut = self._cut_text(content, want, f"\n{_MARKER}\n", tail=True)
        if cut is None:
            return 0
        message["content"], saved = cut
        return saved

    def _shorten_arguments(self, message: dict[str, Any], want: int) -> int:
        """Shorten the long string arguments of a message's calls (a ``Write`` of a whole file, the
        strings of an ``Edit`` or a ``MultiEdit``'s edits), in order, until about ``want`` tokens
        are cut.  Arguments are a JSON string (as chat completions sends them) or an object; either
        stays what it was, with the same keys: only string values are cut."""
        saved = 0
        for call in message.get("tool_calls") or []:
            if saved >= want:
                break
            function = call.get("function") or {}
            arguments = function.get("arguments")
            if isinstance(arguments, dict):
                function["arguments"], gained = self._cut_strings(arguments, want - saved)
                saved += gained
                continue
            if not isinstance(arguments, str):
                continue
            try:
                parsed = json.loads(arguments or "{}")
            except ValueError:
                continue  # not JSON: left as it is, never made into something else
            cut, gained = self._cut_strings(parsed, want - saved)
            if gained > 0:
                function["arguments"] = json.dumps(cut, ensure_ascii=False)
                saved += gained
        return saved

    def _cut_strings(self, value: Any, want: int) -> tuple[Any, int]:
        """``value`` (parsed arguments) with its long strings, at any depth, cut in order until
        about ``want`` tokens are saved, and the tokens saved; keys, lists and other values stay."""
        if want <= 0:
            return value, 0
        if isinstance(value, str):
            cut = self._cut_text(value, want, _ARGUMENT_MARKER, tail=True)
            return (value, 0) if cut is None else cut
        saved = 0
        if isinstance(value, dict):
            shortened: dict[str, Any] = {}
            for key, item in value.items():
                shortened[key], gained = self._cut_strings(item, want - saved)
                saved += gained
            return shortened, saved
        if isinstance(value, list):
            items: list[Any] = []
            for item in value:
                kept, gained = self._cut_strings(item, want - saved)
                items.append(kept)
                saved += gained
            return items, saved
        return value, 0

    def _shorten_reminders(self, message: dict[str, Any], want: int) -> int:
        """Shorten the ``<system-reminder>`` blocks of a user message, the longest first, until
        about ``want`` tokens are cut; the text around them (the user's own words) stays."""
        content = message.get("content")
        if not isinstance(content, str):
            return 0
        spans = list(_REMINDER.finditer(content))
        replaced: dict[int, str] = {}
        saved = 0
        for k in sorted(range(len(spans)), key=lambda k: -len(spans[k].group(1))):
            if saved >= want:
                break
            cut = self._cut_text(spans[k].group(1), want - saved, f"\n{_MARKER}\n", tail=True)
            if cut is not None:
                replaced[k], gained = cut
                saved += gained
        if replaced:
            parts, at = [], 0
            for k, span in enumerate(spans):
                if k in replaced:
                    parts += [content[at : span.start(1)], replaced[k]]
                    at = span.end(1)
            message["content"] = "".join([*parts, content[at:]])
        return saved

    def _old_tool_results(
        self, messages: list[dict[str, Any]], origin: list[int], over: int, changes: list[dict[str, Any]]
    ) -> int:
        protected, recent = self._protected(messages), self._recent_start(messages)
        positions = [i for i in range(recent) if messages[i].get("role") == "tool" and i not in protected]
        return self._shorten(messages, origin, positions, over, changes)

    def _old_messages(
        self, messages: list[dict[str, Any]], origin: list[int], over: int, changes: list[dict[str, Any]]
    ) -> int:
        protected, recent = self._protected(messages), self._recent_start(messages)
        positions = [
            i
            for i in range(recent)
            if messages[i].get("role") in ("assistant", "user") and i not in protected
        ]
        return self._shorten(messages, origin, positions, over, changes)

    def _recent_messages(
        self, messages: list[dict[str, Any]], origin: list[int], over: int, changes: list[dict[str, Any]]
    ) -> int:
        """The recent assistant messages (their calls' long arguments, then their text) and any
        user message but the latest, oldest first."""
        protected, recent = self._protected(messages), self._recent_start(messages)
        positions = [
            i
            for i in range(recent, len(messages))
            if messages[i].get("role") in ("assistant", "user") and i not in protected
        ]
        return self._shorten(messages, origin, positions, over, changes)

    def _latest_request_reminders(
        self, messages: list[dict[str, Any]], origin: list[int], over: int, changes: list[dict[str, Any]]
    ) -> int:
        """Last of all: Claude Code's reminders inside the latest user request."""
        users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
        if not users:
            return 0
        message = messages[users[-1]]
        saved = self._shorten_reminders(message, over + 48)
        if saved > 0:
            _record_shortened(changes, origin[users[-1]], message)
        return saved

    def _old_turns(
        self, messages: list[dict[str, Any]], origin: list[int], over: int, changes: list[dict[str, Any]]
    ) -> int:
        """Drop whole old turns, oldest first: a user message, or an assistant message with the tool
        results that follow it.  A turn holding a protected message, and the recent messages, stay;
        each run of dropped turns leaves a marker on the message after it."""
        protected, recent = self._protected(messages), self._recent_start(messages)
        turns: list[tuple[int, int]] = []
        i = next((k for k, m in enumerate(messages) if m.get("role") != "system"), len(messages))
        while i < recent:
            j = i + 1
            if messages[i].get("role") == "assistant":
                while j < len(messages) and messages[j].get("role") == "tool":
                    j += 1
            if j <= recent and not any(k in protected for k in range(i, j)):
                turns.append((i, j))
            i = j
        chosen: list[tuple[int, int]] = []
        saved = 0
        for begin, end in turns:
            if saved >= over:
                break
            saved += sum(self._message_tokens(messages[k]) for k in range(begin, end))
            chosen.append((begin, end))
        if not chosen:
            return 0
        dropped = sorted(k for begin, end in chosen for k in range(begin, end))
        for k in dropped:
            changes.append({"index": origin[k], "role": messages[k].get("role"), "action": "dropped"})
        runs: list[list[int]] = []
        for k in dropped:
            if runs and runs[-1][-1] == k - 1:
                runs[-1].append(k)
            else:
                runs.append([k])
        for run in reversed(runs):  # from the end, so earlier positions stay valid
            after = run[-1] + 1
            if after < len(messages):
                note = f"[{len(run)} earlier messages cut by tooldistill's context policy]"
                messages[after]["content"] = f"{note}\n{messages[after].get('content') or ''}".rstrip("\n")
            del messages[run[0] : after]
            del origin[run[0] : after]
        return saved

    def _recent_tool_results(
        self, messages: list[dict[str, Any]], origin: list[int], over: int, changes: list[dict[str, Any]]
    ) -> int:
        protected = self._protected(messages)
        positions = [i for i, m in enumerate(messages) if m.get("role") == "tool" and i not in protected]
        return self._shorten(messages, origin, positions, over, changes)

    def _message_tokens(self, message: dict[str, Any]) -> int:
        text = message.get("content") if isinstance(message.get("content"), str) else ""
        calls = (
            json.dumps(message.get("tool_calls") or [], ensure_ascii=False)
            if message.get("tool_calls")
            else ""
        )
        return self._text_tokens(f"{text}{calls}") + 4


def _record_shortened(changes: list[dict[str, Any]], index: int, message: dict[str, Any]) -> None:
    entry = {"index": index, "role": message.get("role"), "action": "shortened"}
    if entry not in changes:
        changes.append(entry)


def fitter_for(policy: ContextPolicy | None) -> Fitter | None:
    """A cached ``Fitter`` for a policy (None when the policy has no window)."""
    if policy is None or policy.window is None:
        return None
    key = policy.model_dump_json()
    with _LOCK:
        found = _FITTERS.get(key)
    if found is None:
        found = Fitter(policy)
        with _LOCK:
            _FITTERS[key] = found
    return found


_FITTERS: dict[str, Fitter] = {}


def summarize_fits(records: list[dict[str, Any] | None], skipped: int) -> dict[str, Any]:
    """How many requests were cut and by how much (``records``: ``Fit.record()`` of each request
    sent), and how many were skipped as too long."""
    cut = [r for r in records if r]
    shares = sorted(r["share_cut"] for r in cut)
    return {
        "requests": len(records) + skipped,
        "cut": len(cut),
        "skipped": skipped,
        "tokens_cut": sum(r["tokens_before"] - r["tokens_after"] for r in cut),
        "median_share_cut": shares[len(shares) // 2] if shares else None,
        "max_share_cut": shares[-1] if shares else None,
    }
