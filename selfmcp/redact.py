"""Keep secrets out of what the server returns and logs.

A `Redactor` knows the values of the credential-shaped environment variables (names
that `credentials.is_credential_name` accepts, values of at least `MIN_SECRET_CHARS`
characters) and replaces each occurrence by `[REDACTED:NAME]`, longest value first so
a secret that contains another is hidden whole.

`install_log_redaction()` makes every log record pass through a redactor when it is
created (message, arguments and traceback text), whichever handler later prints it.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Iterable, Mapping
from typing import Any

from selfmcp.credentials import is_credential_name

MIN_SECRET_CHARS = 8
# A truncated output may end inside a secret: a dangling prefix this long is hidden too.
MIN_PREFIX_CHARS = 4


class Redactor:
    """Replaces known secret values in text by `[REDACTED:NAME]`."""

    def __init__(self, secrets: Iterable[tuple[str, str]] = ()) -> None:
        by_value: dict[str, str] = {}
        for name, value in secrets:
            if len(value) >= MIN_SECRET_CHARS and value not in by_value:
                by_value[value] = name
        self._secrets = sorted(by_value.items(), key=lambda item: (-len(item[0]), item[1]))
        self._pattern = re.compile("|".join(re.escape(v) for v, _ in self._secrets)) if self._secrets else None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Redactor:
        """A redactor for the credential-shaped variables of `environ`."""
        return cls((name, value) for name, value in sorted(environ.items())
                   if is_credential_name(name) and value)

    def including(self, secrets: Iterable[tuple[str, str]]) -> Redactor:
        """This redactor with more (name, value) pairs; itself when there are none."""
        extra = list(secrets)
        if not extra:
            return self
        return Redactor([*((name, value) for value, name in self._secrets), *extra])

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
        names = dict(self._secrets)
        return self._pattern.sub(lambda m: f"[REDACTED:{names[m.group(0)]}]", text) + suffix

    def _split_dangling_prefix(self, text: str) -> tuple[str, str]:
        """(text, "") or (text without a trailing start of a secret, that secret's marker)."""
        longest = len(self._secrets[0][0])
        for size in range(min(longest - 1, len(text)), MIN_PREFIX_CHARS - 1, -1):
            tail = text[-size:]
            for value, name in self._secrets:
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
    """Redact a record in place: its message (with arguments merged), traceback and stack text."""
    if not redactor:
        return
    # Arguments are redacted one by one, keeping the tuple's shape and each clean value's
    # type: formatters such as uvicorn's access log unpack record.args themselves.
    if isinstance(record.msg, str):
        record.msg = redactor.redact(record.msg)
    elif record.msg is not None and redactor.redact(str(record.msg)) != str(record.msg):
        record.msg = redactor.redact(str(record.msg))
    if isinstance(record.args, tuple):
        record.args = tuple(_redact_arg(a, redactor) for a in record.args)
    elif isinstance(record.args, Mapping):
        record.args = {k: _redact_arg(v, redactor) for k, v in record.args.items()}
    if record.exc_info and not record.exc_text:
        record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
    if record.exc_text:
        record.exc_text = redactor.redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redactor.redact(record.stack_info)


def _redact_arg(value: Any, redactor: Redactor) -> Any:
    if isinstance(value, str):
        return redactor.redact(value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    text = str(value)
    cleaned = redactor.redact(text)
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
