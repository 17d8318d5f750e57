"""GlibcSpawn (core/worker/spawner.py): glibc's posix_spawn through ctypes, the GIL let go.

Real processes throughout: each test spawns a real program and reads what it did.
"""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import sys
import textwrap

import pytest

from core.worker.spawner import GlibcSpawn, Spawner

pytestmark = pytest.mark.timeout(60)

spawner = GlibcSpawn.load()
needs_glibc = pytest.mark.skipif(spawner is None, reason="not glibc on Linux")


def _stdout_actions(fd: int) -> list[tuple[int, ...]]:
    return [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0), (os.POSIX_SPAWN_DUP2, fd, 1), (os.POSIX_SPAWN_DUP2, fd, 2)]


def _run(cwd: str, command: str, env: dict[str, str], out: str) -> tuple[int, str]:
    assert spawner is not None
    fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        pid = spawner.spawn(cwd, ["/bin/sh", "-c", command], env, _stdout_actions(fd))
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    with open(out) as fh:
        return os.waitstatus_to_exitcode(status), fh.read()


@needs_glibc
def test_the_child_starts_in_its_directory_with_its_environment_output_and_session(tmp_path):
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "ONLY_THIS": "yes"}
    code, out = _run(str(sandbox), 'pwd; echo "$ONLY_THIS ${HOME:-nohome}"; ps -o sid= -p $$; echo $$; read x || echo eof; echo err >&2; exit 3',
                     env, str(tmp_path / "out"))
    lines = out.split()
    assert code == 3
    assert lines[0] == str(sandbox)  # its own directory: the caller's did not move
    assert os.getcwd() != str(sandbox)
    assert lines[1:3] == ["yes", "nohome"]  # exactly the environment given
    assert lines[3] == lines[4]  # the leader of a session of its own
    assert lines[5:] == ["eof", "err"]  # stdin is /dev/null, stderr goes with stdout


@needs_glibc
def test_the_gil_is_let_go_while_the_child_starts(tmp_path):
    """The child's file actions open two FIFOs in turn; a Python thread of the parent must run
    between the two opens to let the second through. Holding the GIL for the call (as
    ``os.posix_spawn`` does in CPython 3.11) deadlocks here: so it runs in a process of its own."""
    a, b = tmp_path / "a", tmp_path / "b"
    os.mkfifo(a)
    os.mkfifo(b)
    script = textwrap.dedent(f"""
        import os, threading
        from core.worker.spawner import GlibcSpawn
        def helper():
            fd = os.open({str(a)!r}, os.O_RDONLY)  # returns once the child has opened a
            fd2 = os.open({str(b)!r}, os.O_WRONLY)  # Python again: needs the GIL
            os.close(fd); os.close(fd2)
        threading.Thread(target=helper, daemon=True).start()
        actions = [(os.POSIX_SPAWN_OPEN, 3, {str(a)!r}, os.O_WRONLY, 0), (os.POSIX_SPAWN_OPEN, 4, {str(b)!r}, os.O_RDONLY, 0)]
        pid = GlibcSpawn.load().spawn({str(tmp_path)!r}, ["/bin/true"], dict(os.environ), actions)
        print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    """)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        # Free a child left in its second open, so nothing of this test outlives it.
        reader = os.open(a, os.O_RDONLY | os.O_NONBLOCK)
        try:
            os.close(os.open(b, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        os.close(reader)
        pytest.fail("the spawn held the GIL: the parent's thread could not run while the child started")
    assert proc.returncode == 0 and out.strip() == "0"


@needs_glibc
def test_a_failed_start_is_an_oserror_naming_the_cause(tmp_path):
    assert spawner is not None
    with pytest.raises(OSError) as missing:
        spawner.spawn(str(tmp_path), [str(tmp_path / "no-such-program")], {}, [])
    assert missing.value.errno == errno.ENOENT and "no-such-program" in str(missing.value)
    with pytest.raises(OSError) as gone:
        spawner.spawn(str(tmp_path / "no-such-directory"), ["/bin/true"], {}, [])
    assert gone.value.errno == errno.ENOENT
    with pytest.raises(ValueError, match="unknown file action"):
        spawner.spawn(str(tmp_path), ["/bin/true"], {}, [(99, 1)])


@needs_glibc
def test_kept_actions_and_environments_stay_bounded_and_right(tmp_path):
    """More directories and environments than are kept: each spawn still gets its own."""
    assert spawner is not None
    out = str(tmp_path / "out")
    for i in range(GlibcSpawn._CACHE + 20):
        d = tmp_path / f"d{i}"
        d.mkdir()
        code, text = _run(str(d), 'echo "$(pwd) $N"', {"N": str(i)}, out)
        assert (code, text.split()) == (0, [str(d), str(i)])
    assert len(spawner._actions) <= GlibcSpawn._CACHE and len(spawner._envs) <= GlibcSpawn._CACHE
    shared = {"N": "same"}  # environments are kept by content: the same dict changed is a new one
    assert _run(str(tmp_path / "d0"), 'echo "$N"', shared, out) == (0, "same\n")
    shared["N"] = "changed"
    assert _run(str(tmp_path / "d0"), 'echo "$N"', shared, out) == (0, "changed\n")


@needs_glibc
def test_spawner_threads_start_each_task_in_its_sandbox(tmp_path):
    async def main() -> list[str]:
        s = Spawner(2)
        try:
            assert s.native is not None
            outs = []
            pids = []
            for i in range(6):
                d = tmp_path / f"s{i}"
                d.mkdir()
                fd = os.open(d / "out", os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
                pids.append((await s.spawn(str(d), ["/bin/sh", "-c", "pwd"], {}, _stdout_actions(fd)), fd, d))
            for pid, fd, d in pids:
                os.waitpid(pid, 0)
                os.close(fd)
                outs.append((d / "out").read_text().strip() == str(d))
            return outs
        finally:
            s.close()

    assert asyncio.run(main()) == [True] * 6
