"""Who may call the server and which files it may open.

* :class:`APIKeyMiddleware`: ``Authorization: Bearer KEY`` on every route but the open ones
  (``/health``), compared in constant time; answered before routing, so an unknown route
  without the key is a 401 too and reveals nothing.
* :class:`RootJail`: server-side paths resolve (symlinks followed) inside one root folder or
  are refused with the same message whether or not they exist; a folder is walked and every
  entry in it must resolve inside the root too (a DICOM series with one symlink to
  ``/etc/shadow`` is refused whole) and be a regular file or a folder (a FIFO, socket or
  device would block or never end the reader that opens it). Every path the filesystem
  refuses (too long, odd bytes) is a 400 ``invalid_path``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import errno
import os
import stat
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, MutableMapping

from ..root_jail import OutsideRoot, confine_to
from .api_errors import APIError, PathRedactor, error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def api_key_matches(authorization: str | None, api_key: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <api_key>``, compared in constant time.

    Both sides are hashed first so that the comparison takes the same time whatever the
    length of the token a client guesses.
    """
    scheme, _, token = (authorization or "").strip().partition(" ")
    given = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()
    expected = hashlib.sha256(api_key.encode("utf-8")).digest()
    return hmac.compare_digest(given, expected) and scheme.lower() == "bearer"


class APIKeyMiddleware:
    """Pure ASGI middleware: 401 in OpenAI's format unless the request carries the API key.

    Args:
        app: the wrapped application.
        api_key: the key; ``None`` lets every request through.
        open_paths: paths served without the key (``/health``, for load balancers).
    """

    def __init__(self, app: ASGIApp, api_key: str | None, open_paths: Iterable[str] = ("/health",)) -> None:
        self.app = app
        self.api_key = api_key
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.api_key is None or scope.get("path") in self.open_paths:
            await self.app(scope, receive, send)
            return
        headers = {key.lower(): value for key, value in scope.get("headers", [])}
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        if api_key_matches(authorization, self.api_key):
            await self.app(scope, receive, send)
            return
        message = ("missing API key: send it as 'Authorization: Bearer KEY'" if not authorization
                   else "invalid API key")
        body = json.dumps(error_body(message, type="invalid_request_error", code="invalid_api_key")).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})


class RootJail:
    """Resolves client paths inside ``root`` (symlinks followed) or refuses them.

    Args:
        root: the resolved root folder; ``None`` refuses every server-side path.
        max_entries: files and folders a folder source may hold (walking is bounded).
    """

    def __init__(self, root: Path | None, max_entries: int = 10_000) -> None:
        self.root = root
        self.max_entries = max_entries

    def resolve(self, raw: str, *, param: str, redact: PathRedactor) -> Path:
        """The real path ``raw`` names (relative to the root, or absolute inside it), checked.

        A file must resolve inside the root; a folder must, and so must everything in it.

        Raises:
            APIError: 400 when paths are disabled, the path (or something in the folder)
                resolves outside the root, or it does not exist under the root.
        """
        if self.root is None:
            raise APIError(400, "this server reads no server-side paths (its operator allows them with --root DIR)",
                           code="paths_disabled", param=param)
        if not raw or "\x00" in raw:
            raise APIError(400, "empty or invalid path", code="invalid_path", param=param)
        try:
            raw.encode("utf-8")  # a lone surrogate ("\udcff" in JSON) names no file
        except UnicodeEncodeError:
            raise APIError(400, "the path is not valid UTF-8 text", code="invalid_path", param=param) from None
        candidate = Path(raw)  # never expanded: "~" is a folder name under the root like any other
        if not candidate.is_absolute():
            candidate = self.root / candidate
        real = self._real(candidate, param)
        try:
            info = real.stat()
        except FileNotFoundError:
            raise APIError(400, f"{redact.public(real)}: no such file or folder under the server root",
                           code="path_not_found", param=param) from None
        except OSError as exc:  # ENAMETOOLONG, ELOOP, EACCES...
            raise self._invalid(exc, param) from None
        if stat.S_ISDIR(info.st_mode):
            self._check_folder(real, param, redact)
        elif not stat.S_ISREG(info.st_mode):
            raise APIError(400, f"{redact.public(real)}: not a regular file", code="invalid_path", param=param)
        return real

    @staticmethod
    def _invalid(exc: OSError, param: str) -> APIError:
        reason = ("the path is too long" if exc.errno == errno.ENAMETOOLONG
                  else f"the path cannot be used ({os.strerror(exc.errno) if exc.errno else 'invalid'})")
        return APIError(400, reason, code="invalid_path", param=param)

    def check(self, path: Path, *, param: str, redact: PathRedactor) -> Path:
        """Check an already resolved path again right before it is opened (the tree may have changed)."""
        return self.resolve(str(path), param=param, redact=redact)

    def _real(self, candidate: Path, param: str) -> Path:
        assert self.root is not None
        # The same answer whether the path exists or not: the refusal must not reveal what
        # lies outside the root.
        outside = APIError(400, "the path is outside the server's allowed root", code="path_outside_root", param=param)
        try:
            return confine_to(candidate, self.root)
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise self._invalid(exc, param) from None
            raise outside from None  # symlink loops, unreadable components
        except (OutsideRoot, ValueError, RuntimeError):  # outside, unusable components
            raise outside from None

    def _check_folder(self, folder: Path, param: str, redact: PathRedactor) -> None:
        seen = 0
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
            for name in (*dirnames, *filenames):
                seen += 1
                if seen > self.max_entries:
                    raise APIError(400, f"the folder holds more than {self.max_entries} entries (this server's limit)",
                                   code="folder_too_large", param=param)
                entry = Path(dirpath, name)
                try:
                    mode = entry.lstat().st_mode
                    if stat.S_ISLNK(mode):
                        self._real(entry, param)
                        mode = entry.stat().st_mode  # never opened: stat does not block on a FIFO
                except FileNotFoundError:
                    continue  # removed while walking (or a dangling link): the adapter finds it gone
                except OSError as exc:
                    raise self._invalid(exc, param) from None
                if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                    kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
                    raise APIError(400, f"{redact.public(entry)}: {kind}, not a regular file; a folder source may "
                                        "hold regular files and folders only", code="invalid_path", param=param)
