"""The store's password (given in its postgresql:// url) kept out of every log line and error
message: the url as shown, and a log filter that blanks the password wherever it appears,
exception texts included (a driver may echo its connection string)."""

from __future__ import annotations

import logging
from urllib.parse import unquote, urlsplit

HIDDEN = "***"


def password_of(url: str) -> str | None:
    """The password in `url`, None when it has none."""
    try:
        password = urlsplit(url).password
    except ValueError:  # an unparsable port: the text before the host may still hold one
        password = None
        if "://" in url and "@" in url:
            cred = url.split("://", 1)[1].rsplit("@", 1)[0]
            password = cred.split(":", 1)[1] if ":" in cred else None
    return password or None


def safe_url(url: str) -> str:
    """`url` without its password."""
    return redact(url, url)


def redact(text: str, url: str) -> str:
    """`text` with the password of `url` (as written and percent-decoded) blanked."""
    password = password_of(url)
    if not password:
        return text
    for form in {password, unquote(password)}:
        if form:
            text = text.replace(form, HIDDEN)
    return text


class Redact(logging.Filter):
    """Blanks the passwords of `urls` in every record that passes (message and traceback)."""

    def __init__(self, *urls: str) -> None:
        super().__init__()
        self.urls = [u for u in urls if password_of(u)]

    def _clean(self, text: str) -> str:
        for url in self.urls:
            text = redact(text, url)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.urls:
            return True
        record.msg = self._clean(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = self._clean(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = self._clean(record.exc_text)
        return True
