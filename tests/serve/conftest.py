"""Real servers for the HTTP tests: ``whispertune serve`` in a subprocess on a free loopback
port, with a tiny random model (HTTP mechanics) or the built-in base (text)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "src/whispertune/samples/aishell_s0150"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    log: Path
    tmp: Path  # the server's TMPDIR: uploads must not stay there
    process: subprocess.Popen

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def health(self) -> dict:
        r = httpx.get(f"{self.url}/health", timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def leftover_files(self) -> list[Path]:
        """Files left in the server's upload folder (which must exist: else the check would
        pass for the wrong reason)."""
        folders = list(self.tmp.glob("whispertune-serve-*"))
        assert len(folders) == 1, list(self.tmp.iterdir())
        return [p for p in folders[0].rglob("*") if p.is_file()]

    def wait_idle(self, timeout: float = 30) -> dict:
        """/health once no request is admitted any more (a cancelled run ends at its next
        batch)."""
        deadline = time.monotonic() + timeout
        while True:
            h = self.health()
            if h["requests"]["admitted"] == 0 or time.monotonic() > deadline:
                return h
            time.sleep(0.1)


def start_server(root: Path, model: str, *args: str, env: dict | None = None,
                 timeout: float = 180) -> Server:
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / "tmp"
    tmp.mkdir(exist_ok=True)
    port = free_port()
    log = root / "server.log"
    full_env = {**os.environ, "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1", **(env or {})}
    if not env or "WHISPERTUNE_API_KEY" not in env:
        full_env.pop("WHISPERTUNE_API_KEY", None)
    cmd = [sys.executable, "-m", "whispertune", "serve", "--model", model,
           "--port", str(port), "--threads", "2", *args]
    with open(log, "wb") as fh:
        process = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=full_env,
                                   cwd=root)
    server = Server(f"http://127.0.0.1:{port}", log, tmp, process)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}):\n{server.log_text()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the server did not start in {timeout} s:\n{server.log_text()}")
        time.sleep(0.2)


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from tests.backends.tiny_ct2 import make_tiny_ct2

    return make_tiny_ct2(tmp_path_factory.mktemp("serve-tiny"))


# Fast, bounded, deterministic decoding for a random model (it never stops on its own and
# fails every guard), given as a --config file as a user would keep it.
TINY_CONFIG = """\
beam-size: 1
temperatures: [0.0]
max-new-tokens: 24
rescore: false
language: en
"""


def tiny_config(root: Path) -> tuple[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "serve.yaml"
    path.write_text(TINY_CONFIG, encoding="utf-8")
    return "--config", str(path)


@pytest.fixture(scope="session")
def tiny_server(tiny_model, tmp_path_factory) -> Iterator[Server]:
    """The tiny model behind small limits: 3 MB uploads, 300 s of audio, 2 requests."""
    root = tmp_path_factory.mktemp("tiny-server")
    server = start_server(
        root, str(tiny_model), *tiny_config(root),
        "--max-upload-mb", "3", "--max-duration", "300", "--max-queue", "2",
    )
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def base_server(tmp_path_factory) -> Iterator[Server]:
    """The built-in whisper-base with the server's defaults (what users run)."""
    server = start_server(tmp_path_factory.mktemp("base-server"), "builtin:base")
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def jfk(shared_data) -> Path:
    return shared_data / "en" / "jfk" / "jfk.flac"


@pytest.fixture(scope="session")
def longform(shared_data) -> Path:
    return next((shared_data / "longform").glob("*.opus"))


@pytest.fixture(scope="session")
def aishell_clips() -> list[Path]:
    return sorted((SAMPLES / "clips").glob("*.opus"))
