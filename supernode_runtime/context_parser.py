"""Parse OpenNebula's ``context.sh`` as data: a closed-world reader.

The file is never sourced, evaluated or handed to a shell. Statements read::

    # comment
    KEY='value'                  (OpenNebula's form)
    KEY=''                       (empty value)
    KEY='it'\\''s'               (single quote written as '\\'' )
    KEY='first line
    second line'                 (values may span lines)
    KEY='value'   # comment      (blank space, then a comment)
    KEY="plain text"             (double quotes: see below)

``KEY`` is ``[A-Za-z_][A-Za-z0-9_]*`` directly followed by ``=``. The same key
may repeat; the last one wins. CRLF line ends are accepted.

Double-quoted values (hand-written files and older OpenNebula versions): a shell
would expand ``$``, backquotes and ``\\`` inside double quotes, so the text
between the quotes is taken as the value only when it holds none of
``$ ` \\`` and no line break; then shell and this reader agree on the value.
Any other double-quoted value is not read.

Every other line is not read and is reported as a :class:`ParseProblem` with its
line and column - never with any of its text beyond a key name. A problem is an
**error** (``problem.error``) when the unread text could carry one of our
variables (:func:`~supernode_runtime.variables.looks_like_ours` on the key part of
the line or on any ``name=`` in it), and always when a quote swallows later
lines: a quote never closed, a multi-line value followed by stray text, or a
multi-line value with a line that looks like an assignment to an FL-like key.
Other problems are warnings. ``export KEY=...``, spaces around ``=``, unquoted
values, a byte-order mark and lower-case keys are not OpenNebula's format; the
first four are problems here, lower-case keys are read and then refused by
:mod:`.config` when they look like ours.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from supernode_runtime.variables import looks_like_ours


@dataclass(frozen=True)
class ParseProblem:
    """A statement that was not read. ``message`` never quotes a value."""

    line: int
    message: str
    key: str | None = None
    error: bool = False

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class ParseResult:
    """Values (last assignment wins) and problems, in file order."""

    values: dict[str, str] = field(default_factory=dict)
    problems: list[ParseProblem] = field(default_factory=list)

    @property
    def errors(self) -> list[ParseProblem]:
        return [p for p in self.problems if p.error]

    @property
    def warnings(self) -> list[ParseProblem]:
        return [p for p in self.problems if not p.error]


_ASSIGN = re.compile(r"[ \t]*([A-Za-z_][A-Za-z0-9_]*)=")
_IDENT_START = re.compile(r"[ \t]*([A-Za-z_][A-Za-z0-9_]*)")
_NAME_BEFORE_EQ = re.compile(r"([^\s='\"]+)[ \t]*=")
_LINE_KEY = re.compile(r"^[ \t\ufeff]*(?:export[ \t]+)?([A-Za-z_][A-Za-z0-9_]*)[ \t]*=", re.MULTILINE)
_REST_OK = re.compile(r"[ \t\r]*(?:(?<=[ \t])#[^\n]*)?(?:\n|\Z)")
_DOUBLE_UNSAFE = frozenset("$`\\")


def _describe(ch: str) -> str:
    """A character in a message, without revealing letters or digits."""
    names = {" ": "a space", "\t": "a tab", "\r": "a carriage return", "\ufeff": "a byte-order mark (U+FEFF)"}
    if ch in names:
        return names[ch]
    if ch.isascii() and ch.isalnum():
        return "a letter or digit"
    if ch.isascii() and ch.isprintable():
        return repr(ch)
    return f"character U+{ord(ch):04X}"


def _ours(line_text: str) -> bool:
    """Could this unread line carry one of our variables?"""
    key_part = line_text.split("=", 1)[0]
    return looks_like_ours(key_part) or any(looks_like_ours(n) for n in _NAME_BEFORE_EQ.findall(line_text))


def _not_a_statement(line_text: str) -> tuple[str, str | None]:
    """(message, key) for a line that does not start with ``KEY=``."""
    if "=" not in line_text:
        return "not a KEY='value' statement (no '=')", None
    body = line_text.lstrip(" \t")
    if re.match(r"export[ \t]", body):
        m = _IDENT_START.match(body, len("export"))
        key = m.group(1) if m else None
        return "'export' is not part of OpenNebula's KEY='value' format; the line is not read", key
    m = _IDENT_START.match(line_text)
    col = (m.end() if m else len(line_text) - len(body)) + 1
    bad = line_text[col - 1]
    key = m.group(1) if m else None
    where = f"after {key}" if key else "before the key"
    return f"not a KEY='value' statement: {_describe(bad)} {where} (column {col})", key


def _swallowed_keys(text: str) -> str:
    keys = sorted(set(_LINE_KEY.findall(text)))
    return f" (they include {', '.join(keys)})" if keys else ""


class _Reader:
    def __init__(self, text: str) -> None:
        self.text = text
        self.result = ParseResult()

    def line_at(self, pos: int) -> int:
        return self.text.count("\n", 0, pos) + 1

    def eol(self, pos: int) -> int:
        end = self.text.find("\n", pos)
        return len(self.text) if end < 0 else end

    def problem(self, line: int, message: str, key: str | None, error: bool) -> None:
        self.result.problems.append(ParseProblem(line, message, key, error))

    def single_quoted(self, pos: int) -> tuple[str, int] | None:
        """Value starting at the opening quote ``pos``; None when never closed."""
        text, parts = self.text, []
        while True:
            close = text.find("'", pos + 1)
            if close < 0:
                return None
            parts.append(text[pos + 1 : close])
            pos = close + 1
            while text.startswith("\\'", pos):
                parts.append("'")
                pos += 2
            if not text.startswith("'", pos):
                return "".join(parts), pos

    def statement(self, start: int, line: int, key: str, vpos: int) -> int:
        """Read the value at ``vpos``; return where the next statement starts."""
        text, line_end = self.text, self.eol(start)
        line_text = text[start:line_end]
        opener = text[vpos : vpos + 1]
        if opener == "'":
            found = self.single_quoted(vpos)
            if found is None:
                last = self.line_at(len(text.rstrip("\n")))
                span = f"lines {line}-{last} to the end of the file are" if last > line else "it is"
                self.problem(
                    line,
                    f"the quote opening the value of {key} is never closed: {span} not read"
                    + _swallowed_keys(text[line_end:]),
                    key,
                    True,
                )
                return len(text)
            value, end = found
        elif opener == '"':
            close = text.find('"', vpos + 1, line_end)
            inner = text[vpos + 1 : close] if close >= 0 else ""
            if close < 0 or any(ch in _DOUBLE_UNSAFE for ch in inner):
                reason = "has no closing quote on its line" if close < 0 else "holds $, ` or \\ (shell expansion)"
                self.problem(
                    line,
                    f"the double-quoted value of {key} {reason}; write {key}='...'",
                    key,
                    _ours(line_text),
                )
                return line_end + 1
            value, end = inner, close + 1
        else:
            what = "is empty without quotes" if opener in ("\n", "", "\r") else "is not in quotes"
            self.problem(line, f"the value of {key} {what}; write {key}='...'", key, _ours(line_text))
            return line_end + 1
        rest = _REST_OK.match(text, end)
        end_line = self.line_at(end)
        if rest is None:
            stop = self.eol(end)
            if end_line > line:
                self.problem(
                    line,
                    f"the value of {key} runs from line {line} to line {end_line} and is followed by "
                    f"unexpected text: a quote is probably missing on line {line}; lines {line}-{end_line} "
                    "are not read" + _swallowed_keys(text[line_end:stop]),
                    key,
                    True,
                )
            else:
                col = end - start + 1
                self.problem(
                    line,
                    f"unexpected text after the value of {key} (column {col})",
                    key,
                    _ours(line_text),
                )
            return stop + 1
        inner_lines = value.split("\n")[1:]
        suspicious = [m for m in (_LINE_KEY.match(t) for t in inner_lines) if m and looks_like_ours(m.group(1))]
        if suspicious:
            self.problem(
                line,
                f"the value of {key} (lines {line}-{end_line}) has a line that looks like an assignment "
                f"to {suspicious[0].group(1)}: is a closing quote missing on line {line}? Not read",
                key,
                True,
            )
        else:
            self.result.values[key] = value
        return rest.end()

    def run(self) -> ParseResult:
        text, pos = self.text, 0
        while pos < len(text):
            line_end = self.eol(pos)
            line_text = text[pos:line_end]
            stripped = line_text.strip(" \t\r")
            if stripped and not stripped.startswith("#"):
                m = _ASSIGN.match(text, pos, line_end)
                if m is None:
                    message, key = _not_a_statement(line_text)
                    self.problem(self.line_at(pos), message, key, _ours(line_text))
                else:
                    pos = self.statement(pos, self.line_at(pos), m.group(1), m.end())
                    continue
            pos = line_end + 1
        return self.result


def parse_context(text: str) -> ParseResult:
    """Parse ``context.sh`` text. Never raises for any input string."""
    return _Reader(text).run()


def quote_value(value: str) -> str:
    """Quote ``value`` the way OpenNebula writes it in context.sh."""
    return "'" + value.replace("'", "'\\''") + "'"


def format_context(values: Mapping[str, str]) -> str:
    """Render ``values`` as context.sh text (inverse of :func:`parse_context`)."""
    lines = ["# Context variables generated by OpenNebula"]
    lines += [f"{key}={quote_value(val)}" for key, val in values.items()]
    return "\n".join(lines) + "\n"
