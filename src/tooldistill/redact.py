"""Secret scrubbing for everything that leaves a reader.

Teacher logs are full of secrets by accident: a ``cat .env`` in a Claude Code session, an API key
pasted into a prompt, an ``Authorization`` header in a request log.  Every string that a reader
puts into a trace or a quarantine record passes through ``Redactor.text`` so that no key reaches a
dataset, a report or a log.  A redacted secret becomes ``[REDACTED:<kind>]`` (only the value: the
``PASSWORD=`` in front of it stays); counts per kind are kept so the ingest summary can say how many
were removed.

Detection has two layers:

1. Our provider patterns (``_PATTERNS``): whole keys with well-known prefixes (Anthropic, OpenAI,
   Stripe's long keys, Hugging Face, GitLab, ...), whole private-key blocks, bearer tokens and the
   password of a URL.  They run first so a key is replaced whole, not piecewise.
2. The plugins of ``detect-secrets`` (the maintained ``bc-detect-secrets`` fork), run in-process on
   each line: provider detectors (Stripe, SendGrid, npm, Twilio, Azure storage keys, JWTs, AWS,
   Slack, Mailchimp, Discord, Artifactory, Square, IBM, Cloudant, SoftLayer, ...), the keyword
   detector's ``password=`` / ``secret: ...`` / ``"token": "..."`` assignments, and high-entropy
   base64/hex strings, with the library's heuristic filters (templates, indirect references,
   UUIDs, sequences) and a few of our own against false positives on ordinary text (see
   ``_plausible``).

Speed: a cheap gate (``_GATE``: the words and prefixes that every detector needs) lets ordinary
text skip the plugins; the plugins are built once per process; results for repeated strings are
cached.  Strings shorter than ``MIN_CHARS`` are left alone.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache, lru_cache, partial
from typing import Any

#: Strings shorter than this hold no secret worth the scan.
MIN_CHARS = 8
#: A value found by the keyword detector or an entropy detector is replaced only when it is at
#: least this long (shorter ones are words like ``str`` or ``None`` in ``token: str``).
MIN_SECRET_CHARS = 6
#: Entropy limits (bits per character) for the high-entropy detectors.  The library's defaults are
#: 4.5 (base64) and 3.0 (hex); base64 is raised for ordinary text, and hex only counts next to a
#: secret-sounding word (a bare hex string is far more often a git SHA or a digest than a key).
BASE64_LIMIT = 4.5
BASE64_MIN_CHARS = 24
HEX_LIMIT = 3.0

# An ``Authorization`` header's value: the header name (a quoted key in JSON or a dict, an argument
# of ``headers.set("Authorization", ...)``), an optional scheme word (kept), then the credentials:
# a list of ``name=value`` / ``name="value"`` parameters (Digest, OAuth 1, AWS SigV4) or one token.
# A value in a variable (``Token $API_TOKEN``, ``f"Token {token}"``) matches no credentials, and
# the scheme word alone is no secret (``_auth_value``).
_AUTH_PARAM = r"""[A-Za-z_][\w\-]*=(?:\\?"[^"\\\n]*\\?"|[^\s"'\\,]+)"""
_AUTH_HEADER = (
    r"""(?i:(?:proxy-)?authorization)(?:(?:\\?["'])?\s*[:=]|\\?["']\s*,)\s*(?:\\?["'])?"""
    r"(?:(?P<scheme>[A-Za-z]+[0-9]*(?:-[A-Za-z0-9]+)*)\s+)?"
    rf"(?P<v>{_AUTH_PARAM}(?:\s*,\s*{_AUTH_PARAM})*|[A-Za-z0-9_\-\.~+/:=]+)"
)

# Each pattern names the kind of secret it finds and the literals (needles) a text must hold for it
# to match: a pattern runs only on a text that holds one of them (``in`` is far cheaper than a
# regular expression scanning every position).  They are deliberately specific (prefixes that real
# providers use) so ordinary text is left alone.  A pattern with a ``v`` group replaces only that
# group (the label in front of it stays).
_PATTERNS: list[tuple[str, tuple[str, ...], str]] = [
    ("anthropic_key", ("sk-ant-",), r"sk-ant-[A-Za-z0-9_\-]{20,}"),
    ("openai_key", ("sk-",), r"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}"),
    ("stripe_key", ("k_live_", "k_test_"), r"\b(?:sk|rk|pk)_(?:live|test)_[0-9A-Za-z]{24,}"),
    ("stripe_webhook_secret", ("whsec_",), r"\bwhsec_[0-9A-Za-z]{24,}"),
    ("aws_access_key_id", ("AKIA", "ASIA"), r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    (
        "aws_secret_access_key",
        ("aws_secret_access_key",),
        r"(?i:aws_secret_access_key)[\"']?\s*[:=]\s*[\"']?(?P<v>[A-Za-z0-9/+=]{40})\b",
    ),
    (
        "github_token",
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})\b",
    ),
    # (the library's npm detector finds only ``_authToken=`` values: its ``npm_`` branch has no group)
    ("npm_token", ("npm_",), r"\bnpm_[A-Za-z0-9]{36}\b"),
    ("gitlab_token", ("glpat-",), r"\bglpat-[A-Za-z0-9_\-]{20,}"),
    ("huggingface_token", ("hf_",), r"\bhf_[A-Za-z0-9]{30,}\b"),
    ("slack_token", ("xox",), r"\bxox[baprs]-[A-Za-z0-9\-]{10,}\b"),
    ("google_api_key", ("AIza",), r"\bAIza[0-9A-Za-z_\-]{35}\b"),
    ("google_oauth_secret", ("GOCSPX-",), r"\bGOCSPX-[0-9A-Za-z_\-]{28}\b"),
    ("pypi_token", ("pypi-AgE",), r"\bpypi-AgE[A-Za-z0-9_\-]{50,}"),
    ("digitalocean_token", ("_v1_",), r"\bdo[opr]_v1_[a-f0-9]{64}\b"),
    ("shopify_token", ("shp",), r"\bshp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}\b"),
    ("databricks_token", ("dapi",), r"\bdapi[a-f0-9]{32}\b"),
    (
        "private_key",
        ("PRIVATE KEY",),
        # a whole block; a block cut short (a truncated tool output) up to where its body ends
        r"-----BEGIN [A-Z ]*PRIVATE KEY(?: BLOCK)?-----(?:[\s\S]*?-----END [A-Z ]*PRIVATE KEY(?: BLOCK)?-----"
        r"|(?:[A-Za-z0-9+/=:\-\s]|\\[nr])*)",
    ),
    ("bearer_token", ("bearer",), r"(?i:bearer)\s+(?P<v>[A-Za-z0-9_\-\.=~+/]{20,})"),
    # ``Authorization: Basic <base64 of user:password>``
    (
        "basic_auth",
        ("authorization",),
        r"(?i:authorization)[\"']?\s*[:=]\s*[\"']?(?i:basic)\s+(?P<v>[A-Za-z0-9+/]{8,}={0,2})",
    ),
    # any other ``Authorization`` / ``Proxy-Authorization`` value, whatever its scheme (``Token``,
    # ``Bot``, ``ApiKey``, ``Digest <params>``, ``AWS4-HMAC-SHA256 <params>``) or none; the scheme
    # word stays, as for ``Bearer`` (see ``_AUTH_HEADER``)
    ("auth_header", ("authorization",), _AUTH_HEADER),
    # the password of a URL (``https://user:pass@host``, ``postgres://app:pw@db``)
    ("basic_auth", ("://",), r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s/:@\"'<>]+:(?P<v>[^\s/@\"'<>]+)@"),
]

#: Needles looked for in the lower-cased text (their patterns ignore case).
_CASELESS = {"aws_secret_access_key", "bearer", "authorization"}
_COMPILED = [
    (kind, needles, any(n in _CASELESS for n in needles), re.compile(pattern))
    for kind, needles, pattern in _PATTERNS
]

# What a string must contain for any detector to find something in it.  Every detector here
# needs one of these: a secret-sounding word (the keyword detector and the assignment-shaped
# provider detectors), a provider prefix, a URL, a ``==``-padded block, or a long run of base64
# characters (the entropy detectors and the unprefixed provider formats).
_GATE = re.compile(
    r"(?i:key|token|secret|pass|pwd|auth|contrase|credential|bearer|private|aws)"
    r"|sk-|_live_|_test_|whsec_|SG\.|npm_|eyJ|://|==|gh[pousr]_|github_pat_|glpat-|hf_|xox|AIza"
    r"|GOCSPX-|pypi-|_v1_|shp|dapi|AKIA|ASIA|A3T|ABIA|ACCA|AKC|sq0csp-|PuTTY|-us\d"
    r"|(?:AC|SK)[a-z0-9]{32}"
    r"|[A-Za-z0-9+/=_\-]{20,}"
)


#: Marks the provider plugins that run on windows around secret-sounding words.
WINDOWED = ("<windowed>",)
#: How far around a secret-sounding word a long line is scanned by the keyword detector and the
#: assignment-shaped providers (a line shorter than ``_WHOLE_LINE`` is scanned whole).
_WINDOW_BEFORE, _WINDOW_AFTER, _WHOLE_LINE = 200, 512, 2048
#: The words the keyword detector and the assignment-shaped providers need (one pass finds the
#: windows for both).
_ASSIGNMENT_WORDS = re.compile(r"(?i:key|pw|pass|token|secret|credential|contrase)")


def _windows(line: str, words: re.Pattern[str]) -> list[str]:
    """The stretches of ``line`` around matches of ``words`` (merged), or the whole short line."""
    if len(line) <= _WHOLE_LINE:
        return [line] if words.search(line) else []
    spans: list[list[int]] = []
    for match in words.finditer(line):
        start, end = max(0, match.start() - _WINDOW_BEFORE), match.end() + _WINDOW_AFTER
        if spans and start <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])
    return [line[start:end] for start, end in spans]


@dataclass(frozen=True)
class _Plugins:
    #: (kind, plugin, needles) for the library's provider detectors (RegexBasedDetector subclasses)
    providers: tuple[tuple[str, Any, tuple[str, ...] | None], ...]
    azure: Any
    keyword_regexes: tuple[tuple[re.Pattern[str], int], ...]
    keyword_allowlist: tuple[str, ...]
    base64: Any
    hex: Any
    filters: Any


@cache
def _plugins() -> _Plugins:
    """The detect-secrets plugins, built once per process (worker)."""
    from detect_secrets.filters import heuristic
    from detect_secrets.plugins import keyword
    from detect_secrets.plugins.artifactory import ArtifactoryDetector
    from detect_secrets.plugins.aws import AWSKeyDetector
    from detect_secrets.plugins.azure_storage_key import AzureStorageKeyDetector
    from detect_secrets.plugins.basic_auth import BasicAuthDetector
    from detect_secrets.plugins.cloudant import CloudantDetector
    from detect_secrets.plugins.discord import DiscordBotTokenDetector
    from detect_secrets.plugins.github_token import GitHubTokenDetector
    from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString, HexHighEntropyString
    from detect_secrets.plugins.ibm_cloud_iam import IbmCloudIamDetector
    from detect_secrets.plugins.ibm_cos_hmac import IbmCosHmacDetector
    from detect_secrets.plugins.jwt import JwtTokenDetector
    from detect_secrets.plugins.mailchimp import MailchimpDetector
    from detect_secrets.plugins.npm import NpmDetector
    from detect_secrets.plugins.private_key import PrivateKeyDetector
    from detect_secrets.plugins.sendgrid import SendGridDetector
    from detect_secrets.plugins.slack import SlackDetector
    from detect_secrets.plugins.softlayer import SoftlayerDetector
    from detect_secrets.plugins.square_oauth import SquareOAuthDetector
    from detect_secrets.plugins.stripe import StripeDetector
    from detect_secrets.plugins.twilio import TwilioKeyDetector

    # (kind, plugin, needles): a plugin runs on a line whose lower-cased text holds one of its
    # needles (None: every line), or, for WINDOWED kinds, on the stretches around a
    # secret-sounding word (their patterns are assignments to such a word, and slow on long lines).
    providers = (
        ("stripe_key", StripeDetector(), ("_live_",)),
        ("sendgrid_key", SendGridDetector(), ("sg.",)),
        ("npm_token", NpmDetector(), ("authtoken", "npm")),
        ("twilio_key", TwilioKeyDetector(), None),
        ("jwt", JwtTokenDetector(), ("eyj",)),
        ("private_key", PrivateKeyDetector(), ("private key", "putty")),
        ("aws_key", AWSKeyDetector(), ("akia", "asia", "a3t", "abia", "acca", "aws")),
        ("github_token", GitHubTokenDetector(), ("ghp_", "gho_", "ghu_", "ghs_", "ghr_")),
        ("slack_token", SlackDetector(), ("xox", "hooks.slack.com")),
        ("mailchimp_key", MailchimpDetector(), ("-us",)),
        ("discord_token", DiscordBotTokenDetector(), None),
        ("artifactory_token", ArtifactoryDetector(), ("akc", "artif", "jfrog", "buildkit")),
        ("square_oauth_secret", SquareOAuthDetector(), ("sq0csp-",)),
        ("ibm_cloud_iam_key", IbmCloudIamDetector(), WINDOWED),
        ("ibm_cos_hmac_key", IbmCosHmacDetector(), WINDOWED),
        ("cloudant_key", CloudantDetector(), WINDOWED),
        ("softlayer_key", SoftlayerDetector(), WINDOWED),
        ("basic_auth", BasicAuthDetector(), ("://",)),
    )
    # The keyword detector's assignment shapes for config files (``KEY=value``, ``key: value``)
    # and for code and JSON (quoted values), each searched for every match (the plugin's
    # ``analyze_string`` stops at the first of each).
    shapes = {**keyword.CONFIG_DENYLIST_REGEX_TO_GROUP, **keyword.QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP}
    return _Plugins(
        providers=providers,
        azure=AzureStorageKeyDetector(),
        keyword_regexes=tuple(shapes.items()),
        keyword_allowlist=tuple(word.lower() for word in keyword.ALLOWLIST),
        base64=Base64HighEntropyString(limit=BASE64_LIMIT),
        hex=HexHighEntropyString(limit=HEX_LIMIT),
        filters=heuristic,
    )


# ---------------------------------------------------------------------------------------------
# false-positive filters

_KEYWORD_CONTEXT = re.compile(
    r"(?i:api[_.\-]?key|auth_?key|service_?key|account_?key|priv(?:ate)?_?key|client_?key|secret|token"
    r"|passw(?:or)?d|_pass\b|pwd|credential|contrase)"
)
_VALUE_END = re.compile(r"\s|\\[nrt\"']|[\"'`]")
_PLACEHOLDER = re.compile(
    r"(?i)^(?:x+|\*+|\.+|-+|null|none|nil|true|false|undefined|required|optional|string|str|bytes|int"
    r"|your[_\-].*|my[_\-].*|<.*|.*here|changeme|example.*|placeholder|redacted|secret|password|token"
    r"|pass|passwd|pwd|pass(?:word|phrase)\d?|user|username|[a-z]*_?(?:password|secret|token|key)"
    r"|env|environ.*|os\.environ.*|process\.env.*|settings\..*|config\..*|self\..*|this\..*|args?\..*)$"
)
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z_./\-]*$")
#: the name of a constant or an environment variable (``S3_SECRET``, ``DB_PASSWORD_2``)
_CONSTANT = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+$")
_HEX = frozenset(string.hexdigits)


def _plausible(value: str, line: str, filters: Any) -> bool:
    """Whether a value the keyword or an entropy detector found looks like a secret, not text."""
    if len(value) < MIN_SECRET_CHARS or "[REDACTED:" in value or "REDACTED" in value:
        return False
    if _PLACEHOLDER.match(value):
        return False
    # a word, a dotted name or a path of words (``token: required``, ``password = form.password``,
    # ``secret_name: prod/db-credentials``): not a value
    if _IDENTIFIER.match(value) or _CONSTANT.match(value) or _is_path(value):
        return False
    if value.endswith(("(", ")", "[", "]", "{", "}", ",", ";")) and not any(c.isdigit() for c in value):
        return False
    return not (
        filters.is_templated_secret(value)
        or filters.is_prefixed_with_dollar_sign(value)
        or filters.is_not_alphanumeric_string(value)
        or filters.is_sequential_string(value)
        or filters.is_aws_arn(value)
        or filters.is_indirect_reference(line)
    )


def _is_path(value: str) -> bool:
    """A file path or URL path (``/models/smollm2-135m``, ``s3://bucket/runs/a``, ``./out``)."""
    if "/" not in value:
        return False
    if value.startswith(("/", "./", "../", "~/")) or "://" in value:
        return True
    parts = [p for p in re.split(r"[/\-_.]", value) if p]
    return all(_IDENTIFIER.match(p) or p.isdigit() or len(p) < 8 for p in parts)


def _looks_random(value: str) -> bool:
    """The shape of a random base64 string: letters of both cases and digits, few path parts."""
    if len(value) < BASE64_MIN_CHARS:
        return False
    if not (
        any(c.isdigit() for c in value)
        and any(c.isupper() for c in value)
        and any(c.islower() for c in value)
    ):
        return False
    # a path (``/usr/lib/python3/dist-packages``), or words joined (``configure-python3-build``)
    parts = [p for p in re.split(r"[/\-_]", value) if p]
    if len(parts) > 1 and all(_IDENTIFIER.match(p) or p.isdigit() or len(p) < 8 for p in parts):
        return False
    return not set(value) <= _HEX


def _unescape(line: str) -> str:
    """JSON escapes as the characters they stand for (excerpts of raw log lines are JSON)."""
    if "\\" not in line:
        return line
    return (
        line.replace("\\n", "\n")
        .replace("\\r", "\n")
        .replace("\\t", "\t")
        .replace('\\"', '"')
        .replace("\\'", "'")
    )


_AUTH_SCHEME_KINDS = {"bearer": "bearer_token", "basic": "basic_auth"}
_REDACTED = re.compile(r"\[REDACTED:\w+\]")


def _auth_value(value: str) -> bool:
    """Whether an ``Authorization`` header's credentials look like a secret: not a word (a scheme
    whose value is in a variable), a constant's name, a placeholder or a value already replaced
    (a value that holds one, like SigV4's ``Credential=[REDACTED:...]/...``, still goes whole)."""
    return not (
        len(value) < MIN_SECRET_CHARS
        or _REDACTED.fullmatch(value)
        or _PLACEHOLDER.match(value)
        or _IDENTIFIER.match(value)
        or _CONSTANT.match(value)
    )


def _kind_for(kind: str, value: str) -> str:
    if kind == "aws_key":
        return "aws_access_key_id" if re.fullmatch(r"[A-Z0-9]{20}", value) else "aws_secret_access_key"
    return kind


#: The order in which findings replace text: a provider's finding first, then the keyword
#: detector's, then the entropy detectors' (so ``AccountKey=<key>;...`` is an Azure key, not the
#: keyword's longer value).
PROVIDER, KEYWORD, ENTROPY = 0, 1, 2


def _scan_line(line: str, plugins: _Plugins) -> Iterator[tuple[int, str, str]]:
    """(priority, kind, value) for each secret the library finds in one line."""
    lowered = line.lower()
    assignments = _windows(line, _ASSIGNMENT_WORDS)
    for kind, plugin, needles in plugins.providers:
        if needles is WINDOWED:
            texts = assignments
        elif needles is None or any(needle in lowered for needle in needles):
            texts = [line]
        else:
            continue
        for text in texts:
            for value in plugin.analyze_string(text):
                if not isinstance(value, str) or len(value) < MIN_SECRET_CHARS:
                    continue
                if kind == "basic_auth" and _PLACEHOLDER.match(value):
                    continue
                yield PROVIDER, _kind_for(kind, value), value
    if "==" in line:
        from detect_secrets.core.potential_secret import PotentialSecret

        for value in plugins.azure.analyze_string(line):
            found = PotentialSecret(type="azure", filename="", secret=value.strip("'\""))
            if plugins.azure.context_keys_exists(found, line):
                yield PROVIDER, "azure_storage_key", value.strip("'\"")
    keyword_windows = [text for text in assignments if _KEYWORD_CONTEXT.search(text)]
    keyword_context = bool(keyword_windows)
    for text in keyword_windows:
        # the plugin's allowlist (``publickeytoken``, ``example``, ...) skips the text it is in
        folded = text.lower()
        if not any(word in folded for word in plugins.keyword_allowlist):
            for regex, group in plugins.keyword_regexes:
                for match in regex.finditer(text):
                    raw = match.group(group) or ""
                    value = _VALUE_END.split(raw.strip(), maxsplit=1)[0].rstrip(",;:")
                    if _plausible(value, text, plugins.filters):
                        yield KEYWORD, "secret_keyword", value
    for found in plugins.base64.analyze_string(line):
        value = found.rstrip("=").rsplit("=", 1)[-1]  # ``name=value``: the value
        if (
            _looks_random(value)
            and plugins.base64.calculate_shannon_entropy(value) > BASE64_LIMIT
            and _plausible(value, line, plugins.filters)
            and not plugins.filters.is_potential_uuid(value)
        ):
            yield ENTROPY, "high_entropy_base64", value
    if keyword_context:
        for value in plugins.hex.analyze_string(line):
            if (
                len(value) >= 16
                and plugins.hex.calculate_shannon_entropy(value) > HEX_LIMIT
                and not plugins.filters.is_sequential_string(value)
            ):
                yield ENTROPY, "high_entropy_hex", value


@lru_cache(maxsize=2048)
def _redact(text: str) -> tuple[str, tuple[tuple[str, int], ...]]:
    """``text`` with its secrets replaced, and the count per kind (a pure function: cached)."""
    counts: Counter[str] = Counter()

    def replace(kind: str, match: re.Match[str]) -> str:
        value = match.groupdict().get("v")
        if kind == "auth_header":
            if value is None or not _auth_value(value):
                return match.group(0)
            # a short bearer token or a Basic value the patterns above leave: named by its scheme
            kind = _AUTH_SCHEME_KINDS.get((match.group("scheme") or "").lower(), kind)
        elif value is not None and (
            "[REDACTED:" in value or (kind == "basic_auth" and _PLACEHOLDER.match(value))
        ):
            return match.group(0)  # already replaced, or ``http://user:password@host`` in a description
        counts[kind] += 1
        if value is None:
            return f"[REDACTED:{kind}]"
        # keep the label in front of the value
        start, end = match.start("v") - match.start(), match.end("v") - match.start()
        whole = match.group(0)
        return f"{whole[:start]}[REDACTED:{kind}]{whole[end:]}"

    out = text
    lowered: str | None = None
    for kind, needles, folded, regex in _COMPILED:
        if folded:
            lowered = out.lower() if lowered is None else lowered
            haystack = lowered
        else:
            haystack = out
        if any(needle in haystack for needle in needles):
            out = regex.sub(partial(replace, kind), out)
            lowered = None
    plugins = _plugins()
    found: dict[str, tuple[int, str]] = {}
    for line in _unescape(out).splitlines():
        if len(line) >= MIN_CHARS and _GATE.search(line):
            for priority, kind, value in _scan_line(line, plugins):
                if value not in found or priority < found[value][0]:
                    found[value] = (priority, kind)
    # by priority, then longest first (a value that holds a shorter one is replaced whole)
    for value in sorted(found, key=lambda v: (found[v][0], -len(v))):
        times = out.count(value)
        if times:
            kind = found[value][1]
            out = out.replace(value, f"[REDACTED:{kind}]")
            counts[kind] += times
    return out, tuple(sorted(counts.items()))


#: Strings longer than this are redacted without the cache (large tool outputs are rarely repeated).
_CACHE_CHARS = 16_384


class Redactor:
    """Replaces secrets in strings and nested JSON values; counts what it replaced."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.counts: Counter[str] = Counter()

    def text(self, value: str) -> str:
        if not self.enabled or not value or len(value) < MIN_CHARS or not _GATE.search(value):
            return value
        out, counts = _redact(value) if len(value) <= _CACHE_CHARS else _redact.__wrapped__(value)
        for kind, count in counts:
            self.counts[kind] += count
        return out

    def _keyed(self, key: str, value: str) -> str:
        """A string under a key that names a secret (``{"api_key": "..."}``): the key is the context."""
        if not _KEYWORD_CONTEXT.search(key) or len(value) < MIN_SECRET_CHARS:
            return self.text(value)
        out = self.text(value)
        if out != value or _VALUE_END.search(value):
            return out
        line = f'"{key}": "{value}"'
        if _plausible(value, line, _plugins().filters) and not _IDENTIFIER.match(value):
            self.counts["secret_keyword"] += 1
            return "[REDACTED:secret_keyword]"
        return out

    def value(self, value: Any) -> Any:
        """Redact every string inside a JSON-like value (dict keys are left as they are; a key that
        names a secret, like ``api_key``, makes its string value one)."""
        if not self.enabled:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {
                key: (
                    self._keyed(key, item)
                    if isinstance(item, str) and isinstance(key, str)
                    else self.value(item)
                )
                for key, item in value.items()
            }
        if isinstance(value, list):
            return [self.value(item) for item in value]
        return value


#: The kinds a redaction can name, ours and the library's (for docs and tests).
KINDS: tuple[str, ...] = tuple(
    sorted(
        {name for name, _, _ in _PATTERNS}
        | {
            "sendgrid_key",
            "npm_token",
            "twilio_key",
            "jwt",
            "aws_access_key_id",
            "aws_secret_access_key",
            "mailchimp_key",
            "discord_token",
            "artifactory_token",
            "square_oauth_secret",
            "ibm_cloud_iam_key",
            "ibm_cos_hmac_key",
            "cloudant_key",
            "softlayer_key",
            "azure_storage_key",
            "secret_keyword",
            "high_entropy_base64",
            "high_entropy_hex",
        }
    )
)
