"""One hierarchy for every error the runtime raises on purpose.

Messages say what went wrong and what to do next.
"""

from __future__ import annotations


class VineError(Exception):
    """Base class of every error raised by ``core``."""


class ProtocolError(VineError):
    """A frame or message broke the wire protocol."""


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol cannot carry (our bug or bad user input)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something malformed, unexpected, or of the wrong version (their fault)."""


class AuthenticationError(VineError):
    """The peer could not prove it knows the shared password (or we could not)."""


class ManagerError(VineError):
    """The manager cannot do what was asked (bind failed, bad state, closed)."""


class TaskError(VineError):
    """A task was used wrongly, e.g. submitted twice or changed after submission."""


class FileError(VineError):
    """A file declaration is unusable."""


class TuneError(VineError, KeyError):
    """``Manager.tune`` was given a parameter name it does not know."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class FactoryError(VineError):
    """A factory could not start or keep its workers."""


class TransferError(VineError):
    """A file could not be moved between manager, workers, or a URL source."""
