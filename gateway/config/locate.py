"""Where a key is defined in a TOML text: key paths such as `sensor[1].interval` -> line numbers.

tomllib gives no positions, yet every config problem should name its line; this small scanner
recovers them from the text tomllib already accepted.
"""

from __future__ import annotations

import contextlib
import json
import re

BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def join_key(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


class Locator:
    """Maps key paths (`sensor[1].interval`) to the line that defines them.

    Runs only on text tomllib accepted, so it may be lenient: it follows `[table]` and
    `[[array]]` headers, dotted keys, strings (multi-line too), arrays and inline tables.
    """

    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.line = 1
        self._lines: dict[str, int] | None = None
        self._arrays: dict[str, int] = {}

    @property
    def lines(self) -> dict[str, int]:
        """Key path -> line. The text is scanned at the first question, which only a problem
        asks: a valid configuration (every `status`, every start) never pays for the scan."""
        if self._lines is None:
            self._lines = {}
            with contextlib.suppress(IndexError, ValueError):  # best effort: keep what was found
                self._document()
        return self._lines

    def line_of(self, path: str) -> int | None:
        """Line of `path`, else of its nearest enclosing table or key; None if none is known."""
        while path:
            if path in self.lines:
                return self.lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            if cut <= 0:
                return None
            path = path[:cut]
        return None

    # ------------------------------------------------------------------ scanning
    def _peek(self, n: int = 1) -> str:
        return self.s[self.i : self.i + n]

    def _record(self, path: str, line: int) -> None:
        self.lines.setdefault(path, line)

    def _skip_ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in " \t":
            self.i += 1

    def _skip_to_eol(self) -> None:
        end = self.s.find("\n", self.i)
        self.i = len(self.s) if end < 0 else end

    def _skip_blank(self) -> None:
        """Whitespace, newlines and comments."""
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t\r":
                self.i += 1
            elif c == "\n":
                self.i += 1
                self.line += 1
            elif c == "#":
                self._skip_to_eol()
            else:
                return

    def _document(self) -> None:
        table = ""
        while True:
            self._skip_blank()
            if self.i >= len(self.s):
                return
            start = self.i
            if self.s[self.i] == "[":
                table = self._header()
            else:
                self._keyval(table)
            if self.i == start:  # not understood: skip the line rather than loop
                self._skip_to_eol()

    def _header(self) -> str:
        array = self._peek(2) == "[["
        self.i += 2 if array else 1
        parts = self._key()
        self._skip_ws()
        self.i += 2 if array else 1
        path = ""
        for n, part in enumerate(parts):
            path = join_key(path, part)
            if array and n == len(parts) - 1:
                index = self._arrays.get(path, 0)
                self._arrays[path] = index + 1
                self._record(path, self.line)
                path = f"{path}[{index}]"
            elif path in self._arrays:
                path = f"{path}[{self._arrays[path] - 1}]"
            self._record(path, self.line)
        self._skip_to_eol()
        return path

    def _key(self) -> list[str]:
        parts: list[str] = []
        while True:
            self._skip_ws()
            c = self._peek()
            if c == '"':
                parts.append(self._basic_string())
            elif c == "'":
                end = self.s.index("'", self.i + 1)
                parts.append(self.s[self.i + 1 : end])
                self.i = end + 1
            else:
                m = BARE_KEY.match(self.s, self.i)
                if m is None:
                    return parts
                parts.append(m.group())
                self.i = m.end()
            self._skip_ws()
            if self._peek() != ".":
                return parts
            self.i += 1

    def _basic_string(self) -> str:
        j = self.i + 1
        out: list[str] = []
        while self.s[j] != '"':
            if self.s[j] == "\\":
                out.append(self.s[j : j + 2])
                j += 2
            else:
                out.append(self.s[j])
                j += 1
        self.i = j + 1
        raw = "".join(out)
        try:
            return str(json.loads(f'"{raw}"'))
        except ValueError:
            return raw

    def _keyval(self, table: str) -> None:
        line = self.line
        parts = self._key()
        if not parts:
            return
        path = table
        for part in parts:
            path = join_key(path, part)
            self._record(path, line)
        self._skip_ws()
        if self._peek() != "=":
            self._skip_to_eol()
            return
        self.i += 1
        self._skip_ws()
        self._value(path)

    def _value(self, path: str) -> None:
        c = self._peek()
        if self._peek(3) in ('"""', "'''"):
            quote = self._peek(3)
            end = self.s.index(quote, self.i + 3)
            while quote[0] == '"' and _escaped(self.s, end):
                end = self.s.index(quote, end + 1)
            end += 3
            while self.s[end : end + 1] == quote[0]:  # up to two quotes may close the content
                end += 1
            self.line += self.s.count("\n", self.i, end)
            self.i = end
        elif c == '"':
            self._basic_string()
        elif c == "'":
            self.i = self.s.index("'", self.i + 1) + 1
        elif c == "[":
            self.i += 1
            index = 0
            while True:
                self._skip_blank()
                if self._peek() in ("]", ""):
                    self.i += 1
                    return
                item = f"{path}[{index}]"
                self._record(item, self.line)
                self._value(item)
                index += 1
                self._skip_blank()
                if self._peek() == ",":
                    self.i += 1
        elif c == "{":
            self.i += 1
            while True:
                self._skip_blank()
                if self._peek() in ("}", ""):
                    self.i += 1
                    return
                if self._peek() == ",":
                    self.i += 1
                    continue
                before = self.i
                self._keyval(path)
                if self.i == before:
                    self.i += 1
        else:
            while self.i < len(self.s) and self.s[self.i] not in ",]}\n#":
                self.i += 1


def _escaped(s: str, pos: int) -> bool:
    """Whether the character at `pos` is preceded by an odd number of backslashes."""
    n = 0
    while pos - n - 1 >= 0 and s[pos - n - 1] == "\\":
        n += 1
    return n % 2 == 1
