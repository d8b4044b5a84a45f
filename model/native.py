"""The CPU kernels' C half (cpu_kernels.c), compiled once per machine with the system's C compiler
and loaded with ctypes; harness.model.cpu_kernels falls back to torch's operations without it.

The library is cached under $HARNESS_CACHE/kernels (else ~/.cache/harness/kernels), named by a hash
of the source, the flags and the CPU (it is built with -march=native), so a shared cache folder
serves machines of several kinds, and an edit of the source builds afresh. One process builds it
while the others wait for it (a file lock); the build is renamed into place whole. HARNESS_CC names
the compiler (default: $CC, else cc); HARNESS_NATIVE_KERNELS=0 turns the C kernels off.

The C code's results do not depend on the compiler or the CPU (no fused multiply-adds, no
reassociation: see the top of cpu_kernels.c); they differ from torch's fallback by float rounding.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import signal
import subprocess
import tempfile
from pathlib import Path

from filelock import FileLock, Timeout

from harness.core.files import default_cache_dir

SOURCE = Path(__file__).with_name("cpu_kernels.c")
# -ffp-contract=off and no -ffast-math: IEEE results in source order whatever the target's vector
# width (see the top of cpu_kernels.c); -fno-trapping-math and -fno-math-errno let the compiler
# vectorise the branch-free selects without changing any result.
FLAGS = ("-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-Werror=implicit-function-declaration",
         "-fPIC", "-shared")
NATIVE_FLAGS = ("-march=native",)
ENABLE_ENV, COMPILER_ENV = "HARNESS_NATIVE_KERNELS", "HARNESS_CC"
BUILD_TIMEOUT_S = 60  # a build takes under a second; a warm worker waits 120 s for its slot's
LOCK_TIMEOUT_S = 2 * BUILD_TIMEOUT_S  # how long a process waits for another's build

_P, _I64, _U64, _U32, _F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_float
SIGNATURES = {  # name: (argument types, result type)
    "harness_dropout": ((_P, _P, _P, _I64, _I64, _U64, _I64, _U32, _F32), None),
    "harness_gelu": ((_P, _P, _P, _I64), None),
    "harness_gelu_backward": ((_P, _P, _P, _P, _I64), None),
    "harness_attention_weights": ((_P, _P, _P, _I64, _I64, _I64, _P, _P, _F32, _U64, _I64, _U32), ctypes.c_int32),
    "harness_attention_weights_backward": ((_P, _P, _P, _I64, _I64, _P, _P), None),
    "harness_cross_entropy": ((_P, _P, _P, _I64, _I64, _I64, ctypes.c_int32), _I64),
    "harness_cross_entropy_backward": ((_P, _P, _I64, _I64, _F32), None),
}


def enabled() -> bool:
    return os.environ.get(ENABLE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def compiler() -> list[str]:
    return shlex.split(os.environ.get(COMPILER_ENV) or os.environ.get("CC") or "cc")


def _cpu() -> str:
    """What -march=native builds for: the CPU's model and feature flags (Linux), else the platform's words."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        info = []
    wanted = [line for line in info if line.split(":")[0].strip() in ("model name", "flags", "Features", "CPU part")]
    return "\n".join(dict.fromkeys(wanted)) or f"{platform.machine()} {platform.processor()}"


def library_path(flags: tuple[str, ...]) -> Path:
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), " ".join(flags).encode(), _cpu().encode()])).hexdigest()
    return default_cache_dir() / "kernels" / f"cpu_kernels-{key[:16]}.so"


def _compile(flags: tuple[str, ...], out: Path) -> None:
    """Run the compiler; on a timeout kill its whole process group (cc1, the assembler, the linker)."""
    proc = subprocess.Popen([*compiler(), *flags, "-o", str(out), str(SOURCE)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, proc.args, stdout, stderr)


def build(flags: tuple[str, ...]) -> Path:
    """The library for `flags`, compiled unless it is cached; raises OSError or a SubprocessError.
    One process builds at a time (a lock beside it); each build happens in a folder of its own and
    is renamed into place whole, with the permissions the compiler gave it (a shared cache serves
    every user)."""
    path = library_path(flags)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S):
        if not path.exists():
            with tempfile.TemporaryDirectory(dir=path.parent, prefix=".build-") as folder:
                built = Path(folder) / path.name
                _compile(flags, built)
                os.replace(built, path)
    return path


def _build_and_load(flags: tuple[str, ...]) -> ctypes.CDLL:
    """build(flags) and load it; a cached library that does not load (truncated by a crash, damaged)
    is removed and built again, once, instead of being passed over for the portable build forever."""
    path = build(flags)
    try:
        return _load(path)
    except OSError:
        with FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S):
            path.unlink(missing_ok=True)
        return _load(build(flags))


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    for name, (args, result) in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = list(args), result
    return lib


def _why(err: Exception) -> str:
    """One line on why a build failed: the compiler's first error, or what was missing."""
    if isinstance(err, subprocess.CalledProcessError):
        lines = [line.strip() for line in (err.stderr or "").splitlines() if line.strip()]
        first = next((line for line in lines if "error" in line), lines[0] if lines else "")
        return f"{err.cmd[0]} exited {err.returncode}" + (f": {first}" if first else "")
    if isinstance(err, subprocess.TimeoutExpired):
        return f"{err.cmd[0]} took over {BUILD_TIMEOUT_S} s"
    if isinstance(err, Timeout):
        return f"another process held {err.lock_file} for over {LOCK_TIMEOUT_S} s"
    if isinstance(err, FileNotFoundError) and err.filename == compiler()[0]:
        return f"no C compiler {err.filename!r} (set {COMPILER_ENV} or CC)"
    return str(err)


@functools.cache
def _loaded() -> tuple[ctypes.CDLL | None, str]:
    if not enabled():
        return None, f"torch ({ENABLE_ENV}=0)"
    why = ""
    for flags in (FLAGS + NATIVE_FLAGS, FLAGS):  # a compiler without -march=native still builds the portable one
        try:
            return _build_and_load(flags), "native"
        except (subprocess.TimeoutExpired, Timeout) as err:  # a compiler that hangs: not twice
            return None, f"torch (the C kernels did not build: {_why(err)})"
        except (OSError, subprocess.SubprocessError, AttributeError) as err:
            why = _why(err)
    return None, f"torch (the C kernels did not build: {why})"


def library() -> ctypes.CDLL | None:
    """The loaded C kernels, or None where they are off or could not be built (see state())."""
    return _loaded()[0]


def state() -> str:
    """'native', or 'torch (why not)': which kernels this process's CPU steps take, for the run record."""
    return _loaded()[1]
