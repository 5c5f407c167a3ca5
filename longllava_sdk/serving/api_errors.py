"""Errors as the HTTP API reports them: OpenAI's error body, no internal details.

Every error a client sees is ``{"error": {"message", "type", "param", "code"}}``. Messages
are written for the client: SDK errors keep their text (they name the problem) with server
paths shown relative to the allowed root, and anything that looks like a Python object repr
is removed. Unexpected exceptions become a generic 500 whose details go to the server log only.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..errors import (AdapterError, ConfigError, DecodeLimitError, InputError, LongLLaVAError,
                      MissingDependencyError, OutsideRootError, ProtocolError, UnsupportedSourceError)

#: ``<PIL.Image.Image image mode=RGB size=1x1 at 0x7F...>``, ``<class 'x'>``, ``<function f at 0x..>``...
_REPRS = re.compile(r"<[^<>]*\bat 0x[0-9a-fA-F]+>|<(?:class|module|function|built-in function) [^<>]*>")


#: Most specific first: the code of an SDK error is that of the first class it is an instance of.
_SDK_CODES: tuple[tuple[type[LongLLaVAError], str], ...] = (
    (UnsupportedSourceError, "unsupported_source"), (MissingDependencyError, "missing_dependency"),
    (AdapterError, "unreadable_source"), (InputError, "invalid_input"), (ProtocolError, "invalid_prompt"),
    (ConfigError, "invalid_option"),
)


class APIError(Exception):
    """An error answered to the client with ``status`` and OpenAI's error body.

    Args:
        status: the HTTP status.
        message: what went wrong, for the client (no paths outside the root, no reprs).
        type: OpenAI's error type (``invalid_request_error``, ``rate_limit_error``...).
        code: a stable machine-readable code (``path_outside_root``, ``server_busy``...).
        param: the request field at fault (``messages[0].content[1]``), when there is one.
        headers: extra response headers (``Retry-After``, ``WWW-Authenticate``).
        details: extra fields of the error object (a refused request's planned memory and
            the limit, in bytes).
    """

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None, headers: dict[str, str] | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = scrub_reprs(message)
        self.type = type
        self.code = code
        self.param = param
        self.headers = dict(headers or {})
        self.details = dict(details or {})

    def body(self) -> dict[str, Any]:
        body = error_body(self.message, type=self.type, code=self.code, param=self.param)
        body["error"].update(self.details)
        return body


def error_body(message: str, *, type: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error format."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def scrub_reprs(text: str) -> str:
    """``text`` without Python object reprs (``<... at 0x...>``, ``<class '...'>``)."""
    return _REPRS.sub("<object>", text)


class PathRedactor:
    """Rewrites server paths in messages: relative to the root, temporary files by their part.

    Args:
        root: the server's resolved root; its prefix is removed from every message.
    """

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self._names: dict[str, str] = {}

    def add(self, real: str | os.PathLike[str], public: str) -> None:
        """Show ``real`` (a temporary file holding a data URL image...) as ``public``."""
        self._names[os.fspath(real)] = public

    def public(self, path: str | os.PathLike[str]) -> str:
        """How a path under the root is shown to the client."""
        return self(os.fspath(path))

    def __call__(self, text: str) -> str:
        for real in sorted(self._names, key=len, reverse=True):  # longest first: nested paths
            text = text.replace(real, self._names[real])
        if self.root is not None:
            prefix = str(self.root)
            text = text.replace(prefix + os.sep, "").replace(prefix, ".")
        return text


def from_sdk_error(exc: LongLLaVAError, redact: PathRedactor, *, param: str | None = None) -> APIError:
    """An SDK error (bad input, adapter refusal, protocol mismatch) as a 400 naming the problem."""
    if isinstance(exc, OutsideRootError):  # the jail's answer: nothing about what lies outside
        return APIError(400, "the path is outside the server's allowed root", code="path_outside_root", param=param)
    if isinstance(exc, DecodeLimitError):  # the file was fine to accept, but decoding it was not
        return APIError(422, redact(str(exc)), code=f"decode_{exc.limit}", param=param)
    code = next((code for kind, code in _SDK_CODES if isinstance(exc, kind)), "invalid_request")
    return APIError(400, redact(str(exc)), code=code, param=param)
