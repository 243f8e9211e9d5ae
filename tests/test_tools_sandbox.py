"""The code sandbox, attacked for real: every escape is contained and the service unharmed.

Each test runs real Python in the real sandbox. The limits are set low so that the runaway
cases end quickly; nothing asserts how long anything took.
"""

from __future__ import annotations

import os
import socket
import stat
import sys
from pathlib import Path

import pytest

from bot.errors import SandboxUnavailable, ToolRefused
from bot.tools.code_interpreter import CodeInterpreter
from bot.tools.sandbox import Sandbox, SandboxLimits, SandboxResult
from tests.support.tools import context, personas

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the tested sandbox is Linux's")

LIMITS = SandboxLimits(cpu_seconds=2, memory_bytes=256 * 2**20, file_bytes=4 * 2**20,
                       scratch_bytes=16 * 2**20, processes=12, wall_seconds=15,
                       output_bytes=16 * 1024)
SECRET = "hb-test-secret-5f1c0e7a"
INTERPRETER = os.path.realpath(sys.executable)


def _any_exists(*paths: Path) -> bool:
    return any(path.exists() for path in paths)


def _processes_running(marker: str) -> list[str]:
    """PIDs whose command line contains `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                found.append(entry.name)
        except OSError:
            continue
    return found


@pytest.fixture
def sandbox() -> Sandbox:
    return Sandbox(limits=LIMITS)


async def run(sandbox: Sandbox, code: str, **limits: float) -> SandboxResult:
    chosen = SandboxLimits(**{**LIMITS.__dict__, **limits}) if limits else None
    return await sandbox.run_python(code, chosen)


async def test_runs_code_and_reports_output_and_errors(sandbox: Sandbox) -> None:
    result = await run(sandbox, "import os\nprint(sum(range(10)), os.getcwd())\n")
    assert (result.exit_code, result.stdout) == (0, "45 /tmp\n")
    failed = await run(sandbox, "x = 1\nraise ValueError('nope')\n")
    assert failed.exit_code == 1
    assert 'File "/tmp/main.py", line 2' in failed.stderr and "ValueError: nope" in failed.stderr
    assert 'File "<string>"' not in failed.stderr  # the prelude's own frames are not shown
    broken = await run(sandbox, "print('a'\n")
    assert broken.exit_code == 1 and "SyntaxError" in broken.stderr
    assert 'File "<string>"' not in broken.stderr and "/tmp/main.py" in broken.stderr
    assert (await run(sandbox, "print('bye')\nexit(3)\nprint('not reached')\n")).exit_code == 3


async def test_cannot_connect_to_a_listener_on_the_host(sandbox: Sandbox) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        code = (
            "import socket\n"
            "for host in ('127.0.0.1', '10.0.2.2', '::1'):\n"
            "    try:\n"
            f"        socket.create_connection((host, {port}), timeout=2)\n"
            "        print('CONNECTED', host)\n"
            "    except OSError as exc:\n"
            "        print('refused', host, type(exc).__name__)\n"
        )
        result = await run(sandbox, code)
        assert result.exit_code == 0, result.stderr
        assert "CONNECTED" not in result.stdout and result.stdout.count("refused") == 3
        with pytest.raises(BlockingIOError):  # nobody knocked
            listener.accept()
    finally:
        listener.close()


async def test_cannot_resolve_names_and_sees_only_loopback(sandbox: Sandbox) -> None:
    code = (
        "import socket\n"
        "try:\n"
        "    print(socket.getaddrinfo('example.com', 443))\n"
        "except OSError as exc:\n"
        "    print('no dns', type(exc).__name__)\n"
        "print(sorted(name for _, name in socket.if_nameindex()))\n"
    )
    result = await run(sandbox, code)
    assert result.stdout.splitlines() == ["no dns gaierror", "['lo']"], result.stderr


async def test_sees_no_secret_from_the_service_environment(
        sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTHBOT_TEST_TOKEN", SECRET)
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", SECRET + "-tg")
    code = (
        "import os\n"
        "print(dict(os.environ))\n"
        "for pid in [p for p in os.listdir('/proc') if p.isdigit()] + ['1', "
        f"'{os.getpid()}', '{os.getppid()}']:\n"
        "    try:\n"
        "        print(pid, open(f'/proc/{pid}/environ', 'rb').read())\n"
        "    except OSError as exc:\n"
        "        print(pid, type(exc).__name__)\n"
    )
    result = await run(sandbox, code)
    assert result.exit_code == 0, result.stderr
    assert SECRET not in result.stdout and SECRET not in result.stderr
    assert f"{os.getpid()} FileNotFoundError" in result.stdout  # the service is not visible
    assert os.environ["HEARTHBOT_TEST_TOKEN"] == SECRET  # and is untouched


async def test_cannot_write_outside_its_scratch_directory(sandbox: Sandbox,
                                                          tmp_path: Path) -> None:
    host_dir = tmp_path / "host"
    host_dir.mkdir(mode=0o777)
    host_dir.chmod(0o777)
    targets = ["/escape", "/usr/escape", "/etc/escape", "/root/escape", f"{sys.prefix}/escape",
               f"{host_dir}/escape", "/proc/sys/kernel/hostname", "/dev/escape"]
    code = (
        "import os\n"
        f"for path in {targets!r}:\n"
        "    try:\n"
        "        with open(path, 'w') as f:\n"
        "            f.write('x')\n"
        "        print('WROTE', path)\n"
        "    except OSError as exc:\n"
        "        print('denied', path, exc.errno)\n"
        "open('/tmp/inside', 'w').write('ok')\n"
        "print('scratch', open('/tmp/inside').read())\n"
    )
    result = await run(sandbox, code)
    assert "WROTE" not in result.stdout, result.stdout
    assert result.stdout.count("denied") == len(targets) and "scratch ok" in result.stdout
    assert not _any_exists(host_dir / "escape", Path("/escape"))


async def test_a_fork_bomb_is_stopped_by_the_process_limit(sandbox: Sandbox) -> None:
    marker = "7391.25"
    code = (
        "import os\n"
        "children = 0\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        f"            os.execv('/bin/sleep', ['sleep', '{marker}'])\n"
        "        children += 1\n"
        "except OSError as exc:\n"
        "    print('stopped after', children, type(exc).__name__)\n"
    )
    result = await run(sandbox, code)
    words = result.stdout.split()
    assert words[:2] == ["stopped", "after"] and int(words[2]) < LIMITS.processes, result
    assert words[3] == "BlockingIOError"  # EAGAIN from fork
    assert _processes_running(marker) == []  # everything it started went with it


async def test_unbounded_allocation_hits_the_memory_limit(sandbox: Sandbox) -> None:
    result = await run(sandbox, "blocks = []\nwhile True:\n    blocks.append(bytearray(10**7))\n")
    assert result.exit_code != 0
    assert "MemoryError" in result.stderr or result.signal is not None


async def test_a_huge_file_hits_the_file_size_limit(sandbox: Sandbox) -> None:
    code = (
        "with open('big', 'wb') as f:\n"
        "    while True:\n"
        "        f.write(b'x' * 2**20)\n"
    )
    result = await run(sandbox, code)
    assert result.exit_code != 0
    assert "File too large" in result.stderr or result.signal is not None


async def test_an_endless_loop_hits_the_cpu_limit(sandbox: Sandbox) -> None:
    result = await run(sandbox, "while True:\n    pass\n", cpu_seconds=1)
    assert result.signal is not None and not result.timed_out
    assert "CPU time limit" in result.describe(LIMITS)


async def test_a_sleeper_is_killed_at_the_wall_clock_limit(sandbox: Sandbox) -> None:
    result = await run(sandbox, "import time\nprint('start', flush=True)\ntime.sleep(600)\n",
                       wall_seconds=1)
    assert result.timed_out and result.exit_code is None
    assert result.stdout == "start\n"


async def test_endless_output_is_cut(sandbox: Sandbox) -> None:
    result = await run(sandbox, "while True:\n    print('y' * 1000)\n")
    assert result.output_truncated and len(result.stdout) <= LIMITS.output_bytes


async def test_a_subprocess_is_as_confined_as_its_parent(sandbox: Sandbox) -> None:
    code = (
        "import subprocess, sys\n"
        "inner = 'import os, socket; print(os.getuid(), os.environ.get(\"TELEGRAM_BOT_TOKEN\"));"
        " socket.create_connection((\"127.0.0.1\", 9), timeout=1)'\n"
        "done = subprocess.run([sys.executable, '-c', inner], capture_output=True, text=True)\n"
        "print(done.stdout.strip())\n"
        "print(done.stderr.strip().splitlines()[-1])\n"
    )
    result = await run(sandbox, code)
    uid, token = result.stdout.splitlines()[0].split()
    assert int(uid) != 0 and token == "None"
    assert "ConnectionRefusedError" in result.stdout


async def test_the_service_is_unharmed_after_the_attacks(sandbox: Sandbox) -> None:
    for code in ("import os\nwhile True:\n    os.fork()\n",
                 "x = ' ' * (2**40)\n",
                 "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n"
                 "os.kill(1, signal.SIGKILL)\n"):
        await run(sandbox, code)
    again = await run(sandbox, "print('still fine')\n")
    assert again.stdout == "still fine\n"


# --- refusing where nothing confines --------------------------------------------------------


async def test_refuses_when_the_sandbox_cannot_start(tmp_path: Path) -> None:
    broken = Sandbox(limits=LIMITS, bwrap=Path("/bin/false"))
    with pytest.raises(SandboxUnavailable) as caught:
        await broken.run_python("print('should never run')")
    assert "cannot be run here" in str(caught.value)
    assert "confined" in caught.value.user_message
    missing = Sandbox(limits=LIMITS, bwrap=tmp_path / "no-bwrap-here")
    with pytest.raises(SandboxUnavailable):
        await missing.probe()


async def test_refuses_when_the_confinement_is_fake(tmp_path: Path) -> None:
    """A 'bwrap' that ignores its options and just runs the command: the prelude's self-check
    notices the missing confinement (network visible, no no_new_privs) and runs nothing."""
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\n"
                    f'while [ "$#" -gt 0 ] && [ "$1" != "{INTERPRETER}" ]; do shift; done\n'
                    'exec "$@"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    marker = tmp_path / "ran"
    sandbox = Sandbox(limits=LIMITS, bwrap=fake)
    with pytest.raises(SandboxUnavailable, match="self-check failed"):
        await sandbox.run_python(f"open({str(marker)!r}, 'w').write('x')")
    assert not marker.exists()


async def test_the_tool_reports_the_refusal_as_a_plain_sentence(data_dir: Path) -> None:
    guest = personas(data_dir)["guest"]
    tool = CodeInterpreter(Sandbox(limits=LIMITS, bwrap=Path("/bin/false")))
    with pytest.raises(ToolRefused) as caught:
        await tool.run({"code": "print(1)"}, context(guest, data_dir))
    assert str(caught.value).startswith("Code cannot be run here")


async def test_the_tool_formats_results_for_the_model(data_dir: Path, sandbox: Sandbox) -> None:
    guest = personas(data_dir)["guest"]
    tool = CodeInterpreter(sandbox)
    text = await tool.run({"code": "print(6 * 7)"}, context(guest, data_dir))
    assert text == "exit status 0\nstdout:\n42"
    quiet = await tool.run({"code": "x = 1"}, context(guest, data_dir))
    assert "no output" in quiet
