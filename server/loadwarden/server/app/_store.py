"""State stores: where state that must outlive the process is kept.

Policies never talk to a store; the service hands them snapshots. ``memory``
keeps nothing across restarts (the embedded default); ``file`` keeps blobs in a
directory, written atomically. A shared store (Redis) for several replicas
implements the same three methods.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any, Protocol

from .._errors import ConfigError

log = logging.getLogger("loadwarden.server")


class StateStore(Protocol):
    """Named blobs. ``save`` is atomic: a reader sees the old blob or the new one, never a mix."""

    durable: bool

    def load(self, key: str) -> bytes | None:
        """The blob saved under ``key``, or None when there is none."""
        ...

    def save(self, key: str, data: bytes) -> None:
        """Replaces the blob under ``key``."""
        ...

    def quarantine(self, key: str) -> str | None:
        """Moves a blob that cannot be read aside (kept for inspection); returns where to."""
        ...


class MemoryStore:
    """Blobs in a dict: gone when the process ends."""

    durable = False

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}

    def load(self, key: str) -> bytes | None:
        return self._blobs.get(key)

    def save(self, key: str, data: bytes) -> None:
        self._blobs[key] = bytes(data)

    def quarantine(self, key: str) -> str | None:
        blob = self._blobs.pop(key, None)
        if blob is None:
            return None
        aside = f"{key}.corrupt-{time.time_ns()}"
        self._blobs[aside] = blob
        return aside


class FileStore:
    """One file per key in ``directory``.

    ``save`` writes a temporary file in the same directory, fsyncs it, renames
    it over the old one and fsyncs the directory, so a crash at any instant
    leaves either the previous file or the new one. Temporary files left by a
    crash are removed when the store opens.
    """

    durable = True
    max_bytes = 512 * 1024 * 1024  # a larger blob is set aside unread

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
            problem = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError("state.path", f"cannot create directory {str(self.directory)!r}: {problem}") from None
        if not os.access(self.directory, os.W_OK):
            raise ConfigError("state.path", f"directory {str(self.directory)!r} is not writable")
        for leftover in self.directory.glob(".*.tmp"):
            try:
                leftover.unlink(missing_ok=True)
            except OSError as exc:  # e.g. a directory of that name: harmless, never ours to remove
                log.warning("state.path: cannot remove leftover %s: %s", leftover, exc.strerror or exc)

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def load(self, key: str) -> bytes | None:
        """The file's bytes; None when there is none.

        Raises:
            OSError: the file cannot be read, is not a regular file, or is larger than
                ``max_bytes`` (reading it would need several times that in memory).
        """
        path = self._path(key)
        try:
            info = path.stat()
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, f"{path} is not a regular file")
        if info.st_size > self.max_bytes:
            raise OSError(errno.EFBIG, f"{path} is {info.st_size} bytes, more than the {self.max_bytes} allowed")
        return path.read_bytes()

    def save(self, key: str, data: bytes) -> None:
        target = self._path(key)
        tmp = self.directory / f".{key}.{os.getpid()}.tmp"
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def quarantine(self, key: str) -> str | None:
        source = self._path(key)
        aside = source.with_name(f"{source.name}.corrupt-{time.time_ns()}")
        try:
            os.replace(source, aside)
        except FileNotFoundError:
            return None
        return str(aside)


class RedisBlobStore:
    """Blobs in Redis under the shared key prefix (``<prefix>blob:<key>``); each replica
    reads the newest at start and writes its own periodically (the last write wins)."""

    durable = True

    def __init__(self, client: Any, prefix: str) -> None:
        self._client = client  # a blocking redis-py client (shared.sync_client)
        self._prefix = f"{prefix}blob:"

    def load(self, key: str) -> bytes | None:
        import redis

        try:
            blob = self._client.get(self._prefix + key)
        except redis.RedisError as exc:
            raise OSError(f"Redis: {exc}") from None
        return blob if isinstance(blob, bytes) or blob is None else str(blob).encode()

    def save(self, key: str, data: bytes) -> None:
        import redis

        try:
            self._client.set(self._prefix + key, data)
        except redis.RedisError as exc:
            raise OSError(f"Redis: {exc}") from None

    def quarantine(self, key: str) -> str | None:
        import redis

        aside = f"{self._prefix}{key}.corrupt-{time.time_ns()}"
        try:
            self._client.rename(self._prefix + key, aside)
        except redis.ResponseError:  # no such key
            return None
        except redis.RedisError as exc:
            raise OSError(f"Redis: {exc}") from None
        return aside


STORE_NAMES = ("memory", "file", "redis")
