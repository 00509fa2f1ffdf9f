"""Matching student tool calls against reference calls: parse, normalize, compare, explain."""

from tooldistill.match.compare import MODES, Verdict, compare
from tooldistill.match.parse import Parsed, parse_message, parse_text, resolve_names

__all__ = ["MODES", "Parsed", "Verdict", "compare", "parse_message", "parse_text", "resolve_names"]
