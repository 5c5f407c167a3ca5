"""Deliberately bad jobs that prove the sandbox classifies what it must (``kind="call"`` jobs)."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import time


def untyped() -> int:
    raise KeyError("an exception that is not an SDK error")


def typed(path: str) -> int:
    from longllava_sdk.errors import AdapterError

    raise AdapterError(path, "a typed error naming the file")


def hang() -> int:
    while True:
        time.sleep(0.05)


def spin() -> int:
    while True:  # burns CPU: RLIMIT_CPU or the wall clock stops it
        pass


def allocate() -> int:
    blocks = []
    while True:
        blocks.append(bytearray(256 << 20))  # touches nothing: only the address-space limit stops it


def crash() -> int:
    os.kill(os.getpid(), signal.SIGSEGV)
    return 0


def network() -> int:
    with socket.socket() as sock:
        try:
            sock.connect(("127.0.0.1", 9))
        except OSError:
            pass
    return 0


def write(name: str = "stray.txt") -> int:
    with open(name, "w") as handle:  # the worker's working directory
        handle.write("x")
    return 0


def escape(path: str) -> int:
    with open(path, "rb") as handle:
        handle.read(1)
    return 0


def libc_abort() -> int:
    ctypes.CDLL(None).abort()
    return 0
