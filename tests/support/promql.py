"""The metric names a PromQL expression reads: a small tokenizer, enough for the dashboard's
and the alert rules' queries (Prometheus itself checks their syntax)."""

from __future__ import annotations

import re

# words that are PromQL, not metric names (functions are told by the "(" after them)
KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
    | {"and", "or", "unless", "inf", "nan"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_VARIABLE = re.compile(r"\$\{?\w+\}?")
# not the unit of a duration (5m) nor the exponent of a number (1e3)
_WORD = re.compile(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    text = _STRING.sub('""', expr)
    for pattern in (_MATCHERS, _RANGE, _GROUPING, _VARIABLE):
        text = pattern.sub(" ", text)
    names = set()
    for match in _WORD.finditer(text):
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or aggregation
        if match.group().lower() not in KEYWORDS:
            names.add(match.group())
    return names


def for_prometheus(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced, as Grafana would send it."""
    return expr.replace("$__rate_interval", "1m").replace("$model", ".*")
