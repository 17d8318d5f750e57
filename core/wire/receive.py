"""Receiving file streams: the one implementation the manager and the worker both use.

A stream is ``FileBegin`` (its name and announced size), ``FileChunk``\\ s carrying the bytes as
payloads, then ``FileEnd`` (core.wire.messages). :class:`StreamReceiver` keeps the rules every
receiver shares: a chunk past the announced size is the sender's fault (RemoteProtocolError), an
end short of it is a failed transfer (TransferError), and on either the partial result is
discarded. What happens to the bytes is the subclass's: :class:`FileReceiver` (a file or a
directory's tar, placed atomically), :class:`MemoryReceiver` (bytes kept in memory),
:class:`DiscardingReceiver` (read and dropped, when this side cannot keep them), and the manager's
``OutputWriter`` (core.manager.output_targets: into a user's declared path).

:class:`IncomingStreams` is the table of a connection's streams in progress, by name: a chunk or end
for a stream never begun, or a second begin of one in progress, is the sender's fault.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from typing import Any

from ..errors import ProtocolError, RemoteProtocolError, TransferError
from . import messages as M
from .protocol import Frame


class StreamReceiver:
    """One incoming stream, from its ``file_begin`` frame. Subclasses say where the bytes go
    (``_write``, ``_complete``, ``_discard``); the size accounting is here."""

    def __init__(self, begin: Frame) -> None:
        msg = begin.message
        if not isinstance(msg, M.FileBegin):
            raise RemoteProtocolError(f"a stream begins with 'file_begin', not {msg.TYPE!r}")
        self.name = msg.name
        self.size = msg.size
        self.is_dir = msg.dir
        self.mode = (msg.mode if msg.mode else 0o644) & 0o777  # permission bits only: no setuid/setgid from a peer
        self.header: dict[str, Any] = begin.header
        self.target = ""
        self.received = 0

    def chunk(self, frame: Frame) -> None:
        self.received += len(frame.payload)
        if self.received > self.size:
            self.abort()
            raise RemoteProtocolError(f"stream for {self.name} sent {self.received} bytes, announced {self.size}")
        self._write(frame.payload)

    def finish(self) -> int:
        """The stream ended: complete it (returns its size), or TransferError if it was cut short."""
        if self.received != self.size:
            self.abort()
            raise TransferError(f"stream for {self.name} ended after {self.received} of {self.size} bytes")
        self._complete()
        return self.size

    def abort(self) -> None:
        """Drop whatever was received (the stream failed, or the connection ended)."""
        self._discard()

    def _write(self, data: bytes) -> None:
        raise NotImplementedError

    def _complete(self) -> None:
        raise NotImplementedError

    def _discard(self) -> None:
        raise NotImplementedError


class FileReceiver(StreamReceiver):
    """Writes the stream to ``target`` atomically (a temp file beside it, then a rename); a directory
    arrives as a tar and is unpacked into ``target``. Whatever was at ``target`` is replaced."""

    def __init__(self, begin: Frame, target: str) -> None:
        super().__init__(begin)
        self.target = target
        parent = os.path.dirname(os.path.abspath(target)) or "."
        os.makedirs(parent, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=".vine-recv-", dir=parent)
        self.fh = os.fdopen(fd, "wb")

    def _write(self, data: bytes) -> None:
        self.fh.write(data)

    def _complete(self) -> None:
        self.fh.close()
        remove_path(self.target)
        if self.is_dir:
            os.makedirs(self.target)
            try:
                with tarfile.open(self.tmp) as tar:
                    tar.extractall(self.target, filter="tar")
            finally:
                os.unlink(self.tmp)
        else:
            os.chmod(self.tmp, self.mode | 0o600)
            os.replace(self.tmp, self.target)

    def _discard(self) -> None:
        try:
            self.fh.close()
        finally:
            remove_path(self.tmp)


class MemoryReceiver(StreamReceiver):
    """Collects a small stream in memory (``data`` once finished), for a receiver that wants the
    bytes, not a file: saves creating, renaming, reading and removing a staging file."""

    def __init__(self, begin: Frame) -> None:
        super().__init__(begin)
        self._parts: list[bytes] = []
        self.data = b""

    def _write(self, data: bytes) -> None:
        self._parts.append(data)

    def _complete(self) -> None:
        self.data = b"".join(self._parts)
        self._parts = []

    def _discard(self) -> None:
        self._parts = []


class DiscardingReceiver(StreamReceiver):
    """A stream this side cannot keep (no descriptor, no disk): its bytes are read and dropped so the
    connection stays in step, and ``refused`` says why, for whatever the stream was for.
    ``received`` carries on from the receiver it replaces (see IncomingStreams.refuse)."""

    def __init__(self, begin: Frame, reason: str, received: int = 0) -> None:
        super().__init__(begin)
        self.refused: str | None = reason
        self.received = received

    @classmethod
    def instead_of(cls, old: StreamReceiver, reason: str) -> DiscardingReceiver:
        """Takes over from ``old`` (already aborted), counting on from what it received."""
        return cls(Frame(old.header), reason, old.received)

    def chunk(self, frame: Frame) -> None:
        self.received += len(frame.payload)
        if self.received > self.size:
            raise RemoteProtocolError(f"stream for {self.name} sent {self.received} bytes, announced {self.size}")

    def _write(self, data: bytes) -> None:
        pass

    def _complete(self) -> None:
        pass

    def _discard(self) -> None:
        pass


class IncomingStreams:
    """A connection's streams in progress, by name (module docstring)."""

    def __init__(self) -> None:
        self._open: dict[str, StreamReceiver] = {}

    def __contains__(self, name: object) -> bool:
        return name in self._open

    def __len__(self) -> int:
        return len(self._open)

    def __iter__(self) -> Iterator[StreamReceiver]:
        return iter(list(self._open.values()))

    def get(self, name: str) -> StreamReceiver | None:
        return self._open.get(name)

    def begin(self, receiver: StreamReceiver) -> None:
        if receiver.name in self._open:
            receiver.abort()
            raise RemoteProtocolError(f"began sending {receiver.name!r} again in the middle of sending it")
        self._open[receiver.name] = receiver

    def chunk(self, frame: Frame) -> StreamReceiver:
        """Hand a ``file_chunk`` to its stream; ProtocolError if none of that name was begun. An
        OSError of the receiver's own (this side's disk) propagates: see :meth:`refuse`."""
        msg = frame.message
        assert isinstance(msg, M.FileChunk)
        receiver = self._open.get(msg.name)
        if receiver is None:
            raise ProtocolError(f"file_chunk for {msg.name} without file_begin")
        receiver.chunk(frame)
        return receiver

    def end(self, name: str) -> StreamReceiver:
        """The stream ``name`` has ended: no longer in progress, returned unfinished (its caller
        finishes it, and decides what a failure means)."""
        receiver = self._open.pop(name, None)
        if receiver is None:
            raise ProtocolError(f"file_end for {name} without file_begin")
        return receiver

    def refuse(self, name: str, reason: str) -> DiscardingReceiver:
        """This side can no longer keep stream ``name`` (e.g. its disk is full): what it received is
        dropped and the rest will be read and dropped too."""
        old = self._open[name]
        old.abort()
        replacement = DiscardingReceiver.instead_of(old, reason)
        self._open[name] = replacement
        return replacement

    def abort_all(self) -> None:
        """The connection ended: every stream in progress is dropped."""
        for receiver in self._open.values():
            receiver.abort()
        self._open.clear()


def remove_path(path: str) -> None:
    """Remove a file, a symlink or a directory tree at ``path``; nothing there is fine."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
