"""Keep secrets out of what the server returns and logs, and forged lines out of the log.

A `Redactor` knows the values of the credential-shaped environment variables (names
that `credentials.is_secret_name` accepts, and the password of any URL-valued variable,
values of at least `MIN_SECRET_CHARS` characters) and replaces each occurrence by
`[REDACTED:NAME]`, longest first so a secret that contains another is hidden whole. It
also finds each value in its common encodings (`encodings()`): base64 and base64url at
any alignment (so `base64("user:" + secret)` is caught), hex, URL encoding and reversed.

It cannot find a secret split across writes or lines, spaced out, compressed, encrypted,
hashed, encoded twice or any other way, or shorter than MIN_SECRET_CHARS: redaction is a
seat belt for mistakes, not a boundary. What keeps a secret from a skill is not giving it
(SELFMCP_SKILL_ENV=declared).

`install_log_redaction()` makes every log record pass through a redactor when it is
created (message, arguments and traceback text), whichever handler later prints it, and
escapes control characters in the message and its arguments (`escape_controls`), so a
request path with `%0a` in it cannot write a second, forged log line.
"""

from __future__ import annotations

import base64
import logging
import re
import traceback
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

from selfmcp.credentials import is_secret_name

MIN_SECRET_CHARS = 8
# A truncated output may end inside a secret: a dangling prefix this long is hidden too.
MIN_PREFIX_CHARS = 4


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """`text` with every control character (and Unicode line separator) written as an escape."""
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda m: _ESCAPES.get(m.group(0)) or f"\\x{ord(m.group(0)):02x}"
                        if ord(m.group(0)) < 0x100 else f"\\u{ord(m.group(0)):04x}", text)


def encodings(value: str) -> set[str]:
    """`value` and the forms it commonly takes in output, each at least MIN_SECRET_CHARS long.

    Base64 of a value inside a longer string depends on where the value starts modulo 3
    bytes, so for each of the three alignments only the characters made of the value's own
    bits are kept: that run appears whatever precedes or follows the value.
    """
    raw = value.encode()
    found = {value, value[::-1], raw.hex(), raw.hex().upper(), urllib.parse.quote(value, safe=""),
             urllib.parse.quote_plus(value)}
    found.add(re.sub("%[0-9A-F]{2}", lambda m: m.group(0).lower(), urllib.parse.quote(value, safe="")))
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        whole = encode(raw).decode()
        found.update((whole, whole.rstrip("=")))
        for shift in range(3):
            text = encode(b"\0" * shift + raw).decode()
            first, end = -(-8 * shift // 6), 8 * (shift + len(raw)) // 6
            found.add(text[first:end])
    return {v for v in found if len(v) >= MIN_SECRET_CHARS}


def _url_password(value: str) -> str | None:
    """The password of a URL such as postgres://user:password@host/db, else None."""
    if "://" not in value or "@" not in value:
        return None
    try:
        password = urllib.parse.urlsplit(value.strip()).password
    except ValueError:
        return None
    return urllib.parse.unquote(password) if password else None


class Redactor:
    """Replaces known secret values, in any of their `encodings()`, in text by `[REDACTED:NAME]`."""

    def __init__(self, secrets: Iterable[tuple[str, str]] = ()) -> None:
        by_value: dict[str, str] = {}
        raw: dict[str, str] = {}
        for name, value in secrets:
            if len(value) < MIN_SECRET_CHARS:
                continue
            raw.setdefault(value, name)
            for form in sorted(encodings(value)):
                by_value.setdefault(form, name)
        self._raw = sorted(raw.items(), key=lambda item: (-len(item[0]), item[1]))
        self._secrets = sorted(by_value.items(), key=lambda item: (-len(item[0]), item[0]))
        self._names = dict(self._secrets)
        self._pattern = re.compile("|".join(re.escape(v) for v, _ in self._secrets)) if self._secrets else None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Redactor:
        """A redactor for the credential-shaped variables of `environ` and the passwords in its URLs."""
        pairs: list[tuple[str, str]] = []
        for name, value in sorted(environ.items()):
            if not value:
                continue
            if is_secret_name(name):
                pairs.append((name, value))
            password = _url_password(value)
            if password:
                pairs += [(name, value), (name, password)]
        return cls(pairs)

    def including(self, secrets: Iterable[tuple[str, str]]) -> Redactor:
        """This redactor with more (name, value) pairs; itself when there are none."""
        extra = list(secrets)
        if not extra:
            return self
        return Redactor([*((name, value) for value, name in self._raw), *extra])

    def __bool__(self) -> bool:
        return self._pattern is not None

    @property
    def names(self) -> list[str]:
        return sorted({name for _, name in self._secrets})

    def redact(self, text: str, *, truncated: bool = False) -> str:
        """`text` with every secret value replaced; `truncated` also hides a secret cut off at the end."""
        if self._pattern is None or not text:
            return text
        suffix = ""
        if truncated:
            text, suffix = self._split_dangling_prefix(text)
        names = self._names
        return self._pattern.sub(lambda m: f"[REDACTED:{names[m.group(0)]}]", text) + suffix

    def _split_dangling_prefix(self, text: str) -> tuple[str, str]:
        """(text, "") or (text without a trailing start of a secret, that secret's marker)."""
        longest = len(self._raw[0][0])
        for size in range(min(longest - 1, len(text)), MIN_PREFIX_CHARS - 1, -1):
            tail = text[-size:]
            for value, name in self._raw:
                if len(value) > size and value.startswith(tail):
                    return text[:-size], f"[REDACTED:{name}]"
        return text, ""

    def redact_obj(self, obj: Any) -> Any:
        """A copy of a JSON-like value with every string redacted (dict keys included)."""
        if self._pattern is None:
            return obj
        if isinstance(obj, str):
            return self.redact(obj)
        if isinstance(obj, dict):
            return {self.redact_obj(k): self.redact_obj(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return type(obj)(self.redact_obj(v) for v in obj)
        return obj


    def redact_tool_result(self, result: Any) -> Any:
        """A copy of an MCP CallToolResult with its text content and structured content redacted."""
        if self._pattern is None or not hasattr(result, "structured_content"):
            return result
        content = [item.model_copy(update={"text": self.redact(item.text)})
                   if getattr(item, "type", None) == "text" else item for item in result.content]
        return result.model_copy(update={"content": content,
                                         "structured_content": self.redact_obj(result.structured_content)})


class _RecordFactory:
    """A log record factory that redacts each record as it is made."""

    def __init__(self, redactor: Redactor, previous: Any) -> None:
        self.redactor = redactor
        self.previous = previous

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.previous(*args, **kwargs)
        redact_record(record, self.redactor)
        return record


def redact_record(record: logging.LogRecord, redactor: Redactor) -> None:
    """Clean a record in place: secrets redacted from its message, arguments, traceback and stack
    text; control characters escaped in its message and arguments (tracebacks keep their lines)."""
    def clean(text: str) -> str:
        return escape_controls(redactor.redact(text))

    # Arguments are cleaned one by one, keeping the tuple's shape and each clean value's
    # type: formatters such as uvicorn's access log unpack record.args themselves.
    if isinstance(record.msg, str):
        record.msg = clean(record.msg)
    elif record.msg is not None and clean(str(record.msg)) != str(record.msg):
        record.msg = clean(str(record.msg))
    if isinstance(record.args, tuple):
        record.args = tuple(_clean_arg(a, clean) for a in record.args)
    elif isinstance(record.args, Mapping):
        record.args = {k: _clean_arg(v, clean) for k, v in record.args.items()}
    if not redactor:
        return
    if record.exc_info and not record.exc_text:
        record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
    if record.exc_text:
        record.exc_text = redactor.redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redactor.redact(record.stack_info)


def _clean_arg(value: Any, clean: Any) -> Any:
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    text = str(value)
    cleaned = clean(text)
    return value if cleaned == text else cleaned


class RedactingFilter(logging.Filter):
    """The same redaction as a filter, for handlers added after start-up."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record, self.redactor)
        return True


def install_log_redaction(redactor: Redactor) -> None:
    """Redact every log record from now on, and add a redacting filter to the root logger's handlers."""
    previous = logging.getLogRecordFactory()
    if isinstance(previous, _RecordFactory):
        previous = previous.previous
    logging.setLogRecordFactory(_RecordFactory(redactor, previous))
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter(redactor))
