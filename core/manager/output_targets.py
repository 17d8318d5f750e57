"""Writing a task's output back to the path the user declared, without destroying what is there.

An output declared with ``declare_file(path)`` is written at ``path`` when its task ends. What may
already be at that path is the user's, so the rules are:

- a file output replaces a file (or a symlink) at its path: that is what declaring it means;
- a directory output is *merged* into a directory at its path: its entries replace same-named
  files, and nothing else in the directory is touched;
- a file output onto a directory, a directory output onto a file, or an entry of a directory output
  whose kind differs from what is at its place (a file where a directory is, or the reverse) is
  refused before anything is written: the path is left exactly as it was, and the task ends with
  ``output transfer error`` (the manager logs which path and why);
- a path the manager cannot write (its parent is a file, the disk or the file table is full) fails
  that task the same way, never the worker that sent it.

The bytes of a refused output are read and dropped, so the connection stays in step and the worker's
other tasks go on.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
from typing import IO

from ..wire.protocol import Frame
from ..wire.receive import StreamReceiver


class OutputWriter(StreamReceiver):
    """Receives one task output stream into its declared path, by the rules above (the stream's
    size accounting is core.wire.receive's, as for every receiver).

    ``refused`` is None, or after ``finish`` (or already at the start) why the output was not written.
    """

    def __init__(self, begin: Frame, target: str) -> None:
        super().__init__(begin)
        self.target = os.path.abspath(target)
        self.refused: str | None = None
        self.tmp = ""
        self._fh: IO[bytes] | None = None
        parent = os.path.dirname(self.target) or "."
        try:
            os.makedirs(parent, exist_ok=True)
            fd, self.tmp = tempfile.mkstemp(prefix=".vine-recv-", dir=parent)
            self._fh = os.fdopen(fd, "wb")
        except (FileExistsError, NotADirectoryError):
            self.refused = f"cannot write output {self.target}: a file is in the way of its directory {parent}"
        except OSError as exc:
            self.refused = f"cannot write output {self.target}: {exc.strerror or exc}"

    def _write(self, data: bytes) -> None:
        if self._fh is not None:
            try:
                self._fh.write(data)
            except OSError as exc:  # a full disk here is this output's failure, not the worker's
                self.refused = f"cannot write output {self.target}: {exc.strerror or exc}"
                self._drop_tmp()

    def _complete(self) -> None:
        """Write the output in place (or refuse it: ``refused`` says why)."""
        if self._fh is None:
            return
        try:
            self._fh.close()
            self._fh = None
            self.refused = self._place()
        except (OSError, tarfile.TarError) as exc:
            self.refused = f"cannot write output {self.target}: {exc}"
        finally:
            self._drop_tmp()

    def _discard(self) -> None:
        self._drop_tmp()

    # -- placing -------------------------------------------------------------------------------------
    def _place(self) -> str | None:
        existing = _kind(self.target)
        if not self.is_dir:
            if existing == "dir":
                return (f"output {self.target} is an existing directory; the task made a file there. The directory "
                        "was left as it was: remove it, or declare the output at another path")
            os.chmod(self.tmp, self.mode | 0o600)
            os.replace(self.tmp, self.target)
            return None
        if existing not in (None, "dir"):
            return (f"output {self.target} is an existing file; the task made a directory there. The file was "
                    "left as it was: remove it, or declare the output at another path")
        unpacked = tempfile.mkdtemp(prefix=".vine-unpack-", dir=os.path.dirname(self.target))
        try:
            os.chmod(unpacked, self.mode | 0o700)  # it becomes the output directory itself when nothing is there
            with tarfile.open(self.tmp) as tar:
                tar.extractall(unpacked, filter="tar")
            if existing is None:
                os.replace(unpacked, self.target)
                unpacked = ""
                return None
            conflict = _merge_conflict(unpacked, self.target)
            if conflict is not None:
                return (f"directory output {self.target} cannot be merged into the existing directory: {conflict}. "
                        "Nothing in it was changed")
            _merge(unpacked, self.target)
            return None
        finally:
            if unpacked:
                shutil.rmtree(unpacked, ignore_errors=True)

    def _drop_tmp(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass
            self._fh = None
        if self.tmp:
            try:
                os.unlink(self.tmp)
            except FileNotFoundError:
                pass
            self.tmp = ""


def _kind(path: str) -> str | None:
    """None (nothing there), "dir" (a real directory), or "file" (anything else, symlinks included)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return "dir" if stat.S_ISDIR(st.st_mode) else "file"


def _merge_conflict(src: str, dst: str) -> str | None:
    """The first entry of tree ``src`` whose kind differs from what is at its place under ``dst``."""
    with os.scandir(src) as entries:
        listed = list(entries)
    for entry in listed:
        there = _kind(os.path.join(dst, entry.name))
        here = "dir" if entry.is_dir(follow_symlinks=False) else "file"
        if there is None:
            continue
        if there != here:
            return f"{os.path.join(dst, entry.name)} is a {'directory' if there == 'dir' else 'file'}, the output has a " \
                   f"{'directory' if here == 'dir' else 'file'} there"
        if here == "dir":
            found = _merge_conflict(entry.path, os.path.join(dst, entry.name))
            if found is not None:
                return found
    return None


def _merge(src: str, dst: str) -> None:
    """Move tree ``src`` into directory ``dst`` (checked by _merge_conflict first)."""
    with os.scandir(src) as entries:
        listed = list(entries)
    for entry in listed:
        target = os.path.join(dst, entry.name)
        if entry.is_dir(follow_symlinks=False) and _kind(target) == "dir":
            _merge(entry.path, target)
        else:
            os.replace(entry.path, target)
