"""The ``tritonserver`` that nvidia-pytriton ships, started on loopback for a model repository.

nvidia-pytriton's wheel holds a real Triton Inference Server (``pytriton/tritonserver/bin/tritonserver``) with only
the Python backend, whose stub is built once per Python version (``python_backend_stubs/3.X``), and the shared
libraries both need (``nvidia_pytriton.libs``). It pins numpy<2, so it is not installed beside arl2rt: its wheel is
unpacked into a directory of its own (``pip install --no-deps --target DIR nvidia-pytriton``) and found through
``$ARL2RT_TRITONSERVER`` (that directory), else as an installed ``pytriton`` package (found, never imported).

Starting it (:class:`TritonServer`) lays out a backend directory beside the server's log: the Python backend's library
and utilities with the stub for the running Python put where the backend looks for it, as pytriton does. The stub
embeds Python: it runs the interpreter found first on PATH, so the stub's interpreter's ``bin`` goes first there.

That interpreter needs numpy<2: this stub was built for numpy 1 and, under numpy 2, reads wrong input values and
returns empty outputs, without an error. So the stub runs ``DIR/venv/bin/python`` where it exists: a venv made
``--system-site-packages`` from arl2rt's interpreter (torch, onnxruntime, arl2rt itself come from there) with only
``numpy<2`` and ``ml-dtypes<=0.5.4`` (the last that runs on numpy 1) of its own. A stub interpreter with numpy 2 is
refused before the server starts.
The server listens for gRPC on 127.0.0.1 only (HTTP and metrics off); it is stopped (SIGTERM, then SIGKILL) when the
``with`` block ends, whatever happened inside.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from arl2rt.errors import Arl2rtError

HOME_VARIABLE = "ARL2RT_TRITONSERVER"
PYTHON_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
STUB = "triton_python_backend_stub"
STUB_VENV = "venv"  # beside the unpacked wheel: the stub's interpreter, with numpy<2
LOG_TAIL_LINES = 30


@dataclass(frozen=True)
class TritonInstall:
    """Where an unpacked nvidia-pytriton wheel keeps the server, its Python backend and libraries."""

    server: Path  # .../pytriton/tritonserver
    libs: Path  # .../nvidia_pytriton.libs
    python: Path  # the interpreter the stub embeds (numpy<2)

    @property
    def binary(self) -> Path:
        return self.server / "bin" / "tritonserver"

    def stub(self) -> Path:
        """The Python backend's stub for the running Python."""
        version = f"{sys.version_info.major}.{sys.version_info.minor}"  # the stub's venv is made from this Python
        path = self.server / "python_backend_stubs" / version / STUB
        if not path.is_file():
            found = sorted(p.name for p in (self.server / "python_backend_stubs").glob("*"))
            raise Arl2rtError(f"{self.server}: no Python backend stub for Python {version}; it has {found}")
        return path


def _install_at(root: Path) -> TritonInstall | None:
    venv = root / STUB_VENV / "bin" / "python"
    python = venv if venv.exists() else Path(sys.executable)
    install = TritonInstall(root / "pytriton" / "tritonserver", root / "nvidia_pytriton.libs", python)
    return install if install.binary.is_file() else None


def check_stub_python(python: Path) -> None:
    """Raise unless ``python`` runs numpy<2 (see the module docstring)."""
    found = subprocess.run(
        [str(python), "-c", "import numpy; print(numpy.__version__)"], capture_output=True, text=True, timeout=60
    )
    version = found.stdout.strip() or f"none ({found.stderr.strip().splitlines()[-1:]})"
    if found.returncode != 0 or int(version.split(".")[0]) >= 2:
        raise Arl2rtError(
            f"the Python backend stub would run {python} with numpy {version}; expected numpy<2 (under numpy 2 this "
            f"stub passes wrong tensors): make DIR/{STUB_VENV} with `python -m venv --system-site-packages` and "
            "install 'numpy<2' 'ml-dtypes<=0.5.4' in it (docs/serving.md)"
        )


def find_install(home: Path | None = None) -> TritonInstall:
    """The server under ``home`` (a directory the nvidia-pytriton wheel was unpacked into), else under
    ``$ARL2RT_TRITONSERVER``, else beside an installed ``pytriton`` package."""
    how = "pip install --no-deps --target DIR nvidia-pytriton==0.7.0, then set ARL2RT_TRITONSERVER=DIR"
    for root, source in ((home, "--tritonserver"), (os.environ.get(HOME_VARIABLE), f"${HOME_VARIABLE}")):
        if root:
            install = _install_at(Path(root))
            if install is None:
                raise Arl2rtError(f"{source} {root}: expected pytriton/tritonserver/bin/tritonserver under it ({how})")
            return install
    spec = importlib.util.find_spec("pytriton")
    if spec is not None and spec.origin is not None:
        install = _install_at(Path(spec.origin).resolve().parents[1])
        if install is not None:
            return install
    raise Arl2rtError(f"no tritonserver found: ${HOME_VARIABLE} is unset and no pytriton package is installed ({how})")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backend_directory(install: TritonInstall, dest: Path) -> Path:
    """``dest/python/`` with the Python backend's files and this Python's stub (links, nothing copied)."""
    python = dest / "python"
    python.mkdir(parents=True, exist_ok=True)
    links = {name: install.server / "backends" / "python" / name for name in PYTHON_BACKEND_FILES}
    links[STUB] = install.stub()
    for name, target in links.items():
        link = python / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    return dest


def server_environment(install: TritonInstall) -> dict[str, str]:
    """The server's environment: its libraries on the loader path, the stub's interpreter first on PATH (the stub
    embeds the Python it finds there)."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(install.libs), env.get("LD_LIBRARY_PATH")) if p)
    env["PATH"] = os.pathsep.join((str(install.python.parent), env.get("PATH", "")))
    return env


class TritonServer:
    """A ``tritonserver`` serving ``repository`` on ``127.0.0.1:grpc_port`` while the ``with`` block runs.

    ``workdir`` receives the backend directory and ``tritonserver.log``. Entering waits until the server and every
    model are ready (``ready_timeout`` seconds); a server that exits or does not get ready is an Arl2rtError quoting
    the log's last lines.
    """

    def __init__(
        self,
        repository: Path,
        workdir: Path,
        *,
        install: TritonInstall | None = None,
        grpc_port: int | None = None,
        ready_timeout: float = 120.0,
    ) -> None:
        self.repository, self.workdir = Path(repository).resolve(), Path(workdir)
        self.install = install or find_install()
        self.grpc_port = grpc_port or free_port()
        self.ready_timeout = ready_timeout
        self.log_path = self.workdir / "tritonserver.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def command(self) -> list[str]:
        backends = backend_directory(self.install, self.workdir / "backends")
        return [
            str(self.install.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--cache-directory={self.install.server / 'caches'}",
            "--allow-http=false",
            "--allow-metrics=false",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--disable-auto-complete-config",
            "--exit-timeout-secs=5",
        ]

    def log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-LOG_TAIL_LINES:])

    def start(self) -> None:
        check_stub_python(self.install.python)
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=server_environment(self.install)
            )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def wait_ready(self) -> None:
        from arl2rt.serve.client import connect

        client = connect(self.url)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise Arl2rtError(
                    f"tritonserver exited with status {self.process.returncode} while loading {self.repository}; "
                    f"its log ({self.log_path}) ends:\n{self.log_tail()}"
                )
            try:
                if client.is_server_ready():
                    return
            except Exception:  # not listening yet
                pass
            time.sleep(0.2)
        raise Arl2rtError(
            f"tritonserver not ready after {self.ready_timeout:g} s; its log ({self.log_path}) ends:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; safe to call twice."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
