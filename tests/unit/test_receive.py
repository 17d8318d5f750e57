"""core.wire.receive: the one way streams are received (manager and worker), fed frames by hand."""

from __future__ import annotations

import io
import os
import stat
import tarfile

import pytest

from core.errors import ProtocolError, RemoteProtocolError, TransferError
from core.wire import messages as M
from core.wire.protocol import Frame, FrameDecoder, encode_message
from core.wire.receive import DiscardingReceiver, FileReceiver, IncomingStreams, MemoryReceiver, StreamReceiver


def frames(*pieces: tuple[M.Message, bytes]) -> list[Frame]:
    """Frames as a peer's bytes decode to them."""
    return FrameDecoder().feed(b"".join(encode_message(m, p) for m, p in pieces))


def begin(name: str, size: int, **kw: object) -> Frame:
    return frames((M.FileBegin(name, size, **kw), b""))[0]  # type: ignore[arg-type]


def chunk(name: str, data: bytes) -> Frame:
    return frames((M.FileChunk(name), data))[0]


def leftovers(directory: str) -> list[str]:
    return [n for n in os.listdir(directory) if n.startswith(".vine-")]


def test_a_file_arrives_whole_under_its_target_with_only_permission_bits(tmp_path: object) -> None:
    target = os.path.join(str(tmp_path), "sub", "out.bin")
    r = FileReceiver(begin("f", 6, mode=0o4755), target)
    r.chunk(chunk("f", b"abc"))
    assert not os.path.exists(target)  # nothing at the target until the end
    r.chunk(chunk("f", b"def"))
    assert r.finish() == 6
    with open(target, "rb") as fh:
        assert fh.read() == b"abcdef"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o755  # setuid dropped
    assert leftovers(os.path.dirname(target)) == []


def test_a_directory_arrives_as_a_tar_and_replaces_what_was_there(tmp_path: object) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("inner.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    data = buf.getvalue()
    target = os.path.join(str(tmp_path), "d")
    os.makedirs(os.path.join(target, "old"))
    r = FileReceiver(begin("d", len(data), dir=True), target)
    r.chunk(chunk("d", data))
    r.finish()
    assert os.listdir(target) == ["inner.txt"]


@pytest.mark.parametrize("make", ["file", "memory", "discard"])
def test_more_than_announced_is_the_senders_fault_and_drops_the_partial(make: str, tmp_path: object) -> None:
    r = _receiver(make, begin("f", 4), str(tmp_path))
    with pytest.raises(RemoteProtocolError, match="sent 9 bytes, announced 4"):
        r.chunk(chunk("f", b"too many!"))
    assert leftovers(str(tmp_path)) == []


@pytest.mark.parametrize("make", ["file", "memory", "discard"])
def test_an_end_short_of_the_size_is_a_failed_transfer(make: str, tmp_path: object) -> None:
    r = _receiver(make, begin("f", 10), str(tmp_path))
    r.chunk(chunk("f", b"12345"))
    with pytest.raises(TransferError, match="ended after 5 of 10 bytes"):
        r.finish()
    assert leftovers(str(tmp_path)) == [] and not os.path.exists(os.path.join(str(tmp_path), "t"))


def _receiver(make: str, first: Frame, directory: str) -> StreamReceiver:
    if make == "file":
        return FileReceiver(first, os.path.join(directory, "t"))
    if make == "memory":
        return MemoryReceiver(first)
    return DiscardingReceiver(first, "no disk")


def test_memory_and_discarding_receivers() -> None:
    m = MemoryReceiver(begin("f", 5))
    for piece in (b"he", b"", b"llo"):
        m.chunk(chunk("f", piece))
    assert m.finish() == 5 and m.data == b"hello"
    d = DiscardingReceiver(begin("g", 3), "the manager cannot stage g")
    d.chunk(chunk("g", b"abc"))
    assert d.finish() == 3 and d.refused == "the manager cannot stage g"


def test_a_receiver_starts_only_from_a_file_begin() -> None:
    with pytest.raises(RemoteProtocolError, match="begins with 'file_begin', not 'file_chunk'"):
        MemoryReceiver(chunk("f", b"x"))


def test_incoming_streams_keep_several_in_step(tmp_path: object) -> None:
    streams = IncomingStreams()
    streams.begin(MemoryReceiver(begin("a", 2)))
    streams.begin(FileReceiver(begin("b", 1), os.path.join(str(tmp_path), "b")))
    assert "a" in streams and len(streams) == 2
    streams.chunk(chunk("b", b"B"))
    streams.chunk(chunk("a", b"A1"))
    a = streams.end("a")
    assert isinstance(a, MemoryReceiver) and a.finish() == 2 and a.data == b"A1"
    streams.end("b").finish()
    with open(os.path.join(str(tmp_path), "b"), "rb") as fh:
        assert len(streams) == 0 and fh.read() == b"B"


def test_incoming_streams_refuse_what_was_never_begun_or_begun_twice() -> None:
    streams = IncomingStreams()
    with pytest.raises(ProtocolError, match="file_chunk for x without file_begin"):
        streams.chunk(chunk("x", b"1"))
    with pytest.raises(ProtocolError, match="file_end for x without file_begin"):
        streams.end("x")
    streams.begin(MemoryReceiver(begin("x", 1)))
    with pytest.raises(RemoteProtocolError, match="began sending 'x' again"):
        streams.begin(MemoryReceiver(begin("x", 1)))


def test_refusing_a_stream_midway_reads_and_drops_the_rest(tmp_path: object) -> None:
    streams = IncomingStreams()
    streams.begin(FileReceiver(begin("f", 6), os.path.join(str(tmp_path), "f")))
    streams.chunk(chunk("f", b"abc"))
    dropped = streams.refuse("f", "the manager cannot write f: No space left on device")
    assert dropped.received == 3 and leftovers(str(tmp_path)) == []
    streams.chunk(chunk("f", b"def"))
    r = streams.end("f")
    assert r is dropped and r.finish() == 6 and not os.path.exists(os.path.join(str(tmp_path), "f"))
    with pytest.raises(TransferError):
        streams.begin(DiscardingReceiver(begin("g", 2), "x"))
        streams.chunk(chunk("g", b"1"))
        streams.end("g").finish()


def test_abort_all_leaves_nothing_behind(tmp_path: object) -> None:
    streams = IncomingStreams()
    for n in range(3):
        streams.begin(FileReceiver(begin(f"f{n}", 10), os.path.join(str(tmp_path), f"f{n}")))
        streams.chunk(chunk(f"f{n}", b"part"))
    streams.abort_all()
    assert len(streams) == 0 and os.listdir(str(tmp_path)) == []
