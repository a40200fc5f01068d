"""One log format for every process: a JSON object per line, secrets masked.

Each line has ``time`` (RFC 3339, UTC), ``level``, ``service`` (which process: a service's
name, ``node``, ``up``...), ``pid``, ``logger`` and ``message``; ``request_id`` when the line
concerns one request (the edge that handles it sets :data:`REQUEST_ID`, or a line passes
``extra={"request_id": ...}``), and ``exception`` (its traceback) when there is one.

Secrets never reach a log on purpose; :class:`Redaction` is the last line of defence for the
ones that would by accident (an exception that quotes a header, a DSN, a settings repr):
it masks anything shaped like our keys, tokens and credentials, Stripe keys, Authorization
values and DSN passwords, and the literal secrets of the process's own settings.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable
from contextvars import ContextVar
from datetime import UTC, datetime
from types import TracebackType
from typing import IO, TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from crosslogic.settings import Settings

# the request the running code handles: Envoy's x-request-id, an admin call's X-Request-Id
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)

MASK = "***"
_TOKEN = r"[^\s\"',;&}\]]+"  # a value up to the next separator of a header, JSON or query
_SHAPES: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization: <scheme> <value>, as a header, a dict item, a pair or a keyword
    (
        re.compile(
            rf"(?i)(authorization[\"']?\s*(?:[:=]|,(?=\s*[\"']))\s*[\"']?)"
            rf"(?:(?:bearer|basic)\s+)?{_TOKEN}"
        ),
        rf"\1{MASK}",
    ),
    (re.compile(rf"(?i)\b(bearer\s+){_TOKEN}"), rf"\1{MASK}"),
    (re.compile(r"\b(Basic\s+)[A-Za-z0-9+/=]{8,}"), rf"\1{MASK}"),
    # API keys clk_<key_id>_<secret>: the key_id is public (lists, audit), the secret is not
    (re.compile(r"clk_(?:([A-Za-z0-9]{1,16})_)?[A-Za-z0-9_]+"), rf"clk_\1_{MASK}"),
    # node registration tokens and node credentials (crosslogic.fleet.credentials)
    (re.compile(r"(cl(?:rt|nc)_)[A-Za-z0-9]+"), rf"\1{MASK}"),
    # Stripe secret and restricted keys, webhook secrets
    (re.compile(r"\b((?:[sr]k_(?:live|test)|whsec)_)[A-Za-z0-9]+"), rf"\1{MASK}"),
    # a password in a URL: postgres://user:password@host, redis://:password@host
    (re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s/:@]*:)[^\s/@]+@"), rf"\1{MASK}@"),
    # password=..., admin_token: '...', api_key=... (a DSN's keywords, a settings repr)
    (
        re.compile(
            rf"(?i)((?:password|passwd|secret|secret_key|token|api_key)[\"']?\s*[=:]\s*[\"']?)"
            rf"(?!{re.escape(MASK)}){_TOKEN}"
        ),
        rf"\1{MASK}",
    ),
)
_SHORTEST_LITERAL = 8  # shorter configured secrets would mask ordinary words: shapes only


def secrets_of(settings: Settings) -> tuple[str, ...]:
    """The literal secrets a process's settings hold (masked wherever they appear)."""
    return (
        settings.admin_token,
        settings.node_registration_token,
        settings.db_password,
        settings.redis_password,
        settings.stripe_secret_key,
    )


class Redaction(logging.Filter):
    """Masks secrets in a record's message and traceback; never drops a record."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # the longest first: a secret that contains another is masked whole
        found = {s for s in secrets if len(s) >= _SHORTEST_LITERAL}
        self.secrets = tuple(sorted(found, key=len, reverse=True))

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        for shape, mask in _SHAPES:
            text = shape.sub(mask, text)
        return text.replace("clk__***", f"clk_{MASK}")  # a key without its key_id

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception as exc:  # a bad format string must not cost the line
            message = f"{record.msg!r} (unformattable: {exc!r})"
        record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        record.__dict__["request_id"] = self.redact(str(request_id)) if request_id else None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module's docstring for its fields)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            # RFC 3339's Z for UTC
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "service": self.service,
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            line["request_id"] = request_id
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return orjson.dumps(line, default=str).decode()


def configure(
    *, service: str, level: str, secrets: Iterable[str] = (), stream: IO[str] | None = None
) -> None:
    """Every record of this process, ours and the libraries', as one JSON line on ``stream``
    (stderr), secrets masked; uncaught exceptions too. Calling it again replaces the previous
    configuration (``up`` learns its admin token after it starts logging). Like
    ``logging.basicConfig``, it leaves alone a root logger that someone else has configured
    (a test runner calling ``main()`` in its own process)."""
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h.formatter, JsonFormatter)]
    if len(ours) < len(root.handlers):
        return
    for old in ours:
        root.removeHandler(old)
        old.close()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(Redaction(secrets))
    handler.setFormatter(JsonFormatter(service))
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("pgserver").setLevel(logging.WARNING)  # it logs every command it runs
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger("crosslogic").critical("uncaught exception", exc_info=(kind, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or isinstance(args.exc_value, SystemExit):
        return
    where = args.thread.name if args.thread is not None else "?"
    logging.getLogger("crosslogic").critical(
        "uncaught exception in thread %s",
        where,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )
