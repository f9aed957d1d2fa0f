"""Parse OpenNebula's ``context.sh`` as data, with a small state machine.

The file is never sourced, evaluated or handed to a shell. Accepted statements::

    # comment
    KEY='value'
    KEY=''                       (empty value)
    KEY='it'\\''s'               (single quote written as '\\'' )
    KEY='first line
    second line'                 (values may span lines)

The same key may repeat; the last one wins. Any other line (unquoted or
double-quoted values, stray text, an unterminated quote) yields a
:class:`ParseWarning` naming the line number and is skipped.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ParseWarning:
    """A line that is not in ``KEY='value'`` form."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class ParseResult:
    """Values (last assignment wins) and warnings, in file order."""

    values: dict[str, str] = field(default_factory=dict)
    warnings: list[ParseWarning] = field(default_factory=list)


class _State(enum.Enum):
    LINE_START = "line-start"
    COMMENT = "comment"
    KEY = "key"
    EXPECT_QUOTE = "expect-quote"
    QUOTED = "quoted"
    AFTER_QUOTE = "after-quote"
    TRAILING = "trailing"
    SKIP_LINE = "skip-line"


_KEY_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_KEY_CHARS = _KEY_START | frozenset("0123456789")
_BLANK = frozenset(" \t\r")


def _excerpt(text: str, start: int) -> str:
    end = text.find("\n", start)
    snippet = text[start : end if end >= 0 else len(text)]
    return repr(snippet[:40] + ("..." if len(snippet) > 40 else ""))


def parse_context(text: str) -> ParseResult:
    """Parse ``context.sh`` text. Never raises for any input string."""
    result = ParseResult()
    state = _State.LINE_START
    line = 1
    stmt_line = 1
    stmt_start = 0
    key = ""
    value: list[str] = []
    i = 0
    n = len(text)

    def bad(message: str) -> _State:
        result.warnings.append(ParseWarning(stmt_line, f"{message}: {_excerpt(text, stmt_start)}"))
        return _State.SKIP_LINE

    while i <= n:
        ch = text[i] if i < n else ""  # "" marks end of input
        if state is _State.LINE_START:
            if ch in _BLANK:
                pass
            elif ch == "\n":
                line += 1
            elif ch == "":
                break
            elif ch == "#":
                state = _State.COMMENT
            else:
                stmt_line, stmt_start, key, value = line, i, "", []
                if text.startswith("export ", i):
                    i += len("export ")
                    continue
                state = _State.KEY
                continue
        elif state in (_State.COMMENT, _State.SKIP_LINE):
            if ch == "\n":
                line += 1
                state = _State.LINE_START
            elif ch == "":
                break
        elif state is _State.KEY:
            if ch in _KEY_CHARS and (key or ch in _KEY_START):
                key += ch
            elif ch == "=" and key:
                state = _State.EXPECT_QUOTE
            else:
                state = bad("expected KEY='value'")
                continue
        elif state is _State.EXPECT_QUOTE:
            if ch == "'":
                state = _State.QUOTED
            else:
                state = bad(f"value of {key} is not in single quotes")
                continue
        elif state is _State.QUOTED:
            if ch == "'":
                state = _State.AFTER_QUOTE
            elif ch == "":
                result.warnings.append(
                    ParseWarning(stmt_line, f"value of {key} has no closing quote")
                )
                break
            else:
                if ch == "\n":
                    line += 1
                value.append(ch)
        elif state is _State.AFTER_QUOTE:
            if ch == "'":
                state = _State.QUOTED
            elif ch == "\\" and text.startswith("'", i + 1):
                value.append("'")
                i += 1
            elif ch in _BLANK:
                state = _State.TRAILING
            elif ch in ("\n", ""):
                result.values[key] = "".join(value)
                state = _State.LINE_START
                continue
            else:
                state = bad(f"unexpected text after the value of {key}")
                continue
        elif state is _State.TRAILING:
            if ch in _BLANK:
                pass
            elif ch in ("\n", "", "#"):
                result.values[key] = "".join(value)
                state = _State.COMMENT if ch == "#" else _State.LINE_START
                continue
            else:
                state = bad(f"unexpected text after the value of {key}")
                continue
        i += 1
    return result


def quote_value(value: str) -> str:
    """Quote ``value`` the way OpenNebula writes it in context.sh."""
    return "'" + value.replace("'", "'\\''") + "'"


def format_context(values: Mapping[str, str]) -> str:
    """Render ``values`` as context.sh text (inverse of :func:`parse_context`)."""
    lines = ["# Context variables generated by OpenNebula"]
    lines += [f"{key}={quote_value(val)}" for key, val in values.items()]
    return "\n".join(lines) + "\n"
