"""Shared fixtures: tiny sizes (d_model 16, 4 heads, 2 layers), CPU, fixed seeds, a private tokenizer cache."""

from __future__ import annotations

import copy
import json
import os
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

# Every Ray a test starts, in this process or a child, stays on 127.0.0.1; read by Ray when it is first imported,
# so set before any test module imports it.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Every process a test starts inherits this mark: a Ray on this machine without it is someone else's (a sweep
# running beside the tests), which no test may stop.
TEST_SESSION = os.environ.setdefault("HEADSWEEP_TEST_SESSION", f"{os.getpid()}-{secrets.token_hex(4)}")

from model.config import Config, apply_overrides, config_from_dict

TINY: dict[str, Any] = {
    "model": {"d_model": 16, "n_heads": 4, "encoder_layers": 2, "decoder_layers": 2, "d_ff": 32, "dropout": 0.1,
              "max_positions": 128},
    "data": {"synthetic": {"train_size": 400, "valid_size": 20, "test_size": 20}, "vocab_size": 120,
             "max_tokens": 256, "max_len": 64},
    "train": {"lr": 3.0e-3, "warmup_steps": 5, "max_steps": 6, "eval_every": 3, "progress": False, "threads": 1},
    "eval": {"max_sentences": 8, "batch_size": 8, "samples": 2},
}


def tiny_config(*overrides: str, base: dict[str, Any] | None = None) -> Config:
    """The tiny test config with ``key=value`` overrides applied."""
    return config_from_dict(apply_overrides(copy.deepcopy(base or TINY), list(overrides)))


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["HEADSWEEP_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)


REPO = Path(__file__).resolve().parent.parent

# Fixtures that run a sweep, train a model or start a server: a test that uses one is slow by that alone
SLOW_FIXTURES = {"quickstart_smoke", "sweep_dir", "trained_run", "model_and_sources", "s3_server", "s3_outage"}


_SESSION_START: list[float] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    _SESSION_START.append(time.perf_counter())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With $HEADSWEEP_RELIABILITY_OUT set, the run's own duration ends the figures file (bench/reliability.py
    states it on the page: measured, never typed in)."""
    out = os.environ.get("HEADSWEEP_RELIABILITY_OUT")
    if out and _SESSION_START:
        with open(out, "a", encoding="utf-8") as f:
            f.write(json.dumps({"session_seconds": round(time.perf_counter() - _SESSION_START[0], 1)}) + "\n")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The `slow` marker (pyproject.toml) on every test that uses a slow fixture, besides those marked by hand
    (they start Ray, run the sweep command or train for more than a few seconds): `pytest -m "not slow"` is the
    fast loop."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


LEARN = ("model.d_model=64", "model.d_ff=128", "model.dropout=0.0", "gates.mode=learned",
         "gates.attention=[enc_self, dec_self, dec_cross]", "data.synthetic.train_size=3000", "data.vocab_size=300",
         "data.max_tokens=1024", "data.synthetic.valid_size=100", "eval.max_sentences=100", "eval.batch_size=50",
         "train.lr=6e-3", "train.warmup_steps=30", "train.max_steps=600", "train.eval_every=600", "train.threads=2")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory):
    """A small gated model trained on the synthetic pair (about 15 s on 2 cores), shared by the tests of
    learning, decoding and the translate command."""
    from model.train import train

    return train(tiny_config(*LEARN), tmp_path_factory.mktemp("trained"), log=lambda _: None)


@pytest.fixture
def record(request: pytest.FixtureRequest):
    """``record(what, **figures)``: a row of docs/reliability.md's table, appended as JSON to the file named by
    $HEADSWEEP_RELIABILITY_OUT (python -m bench.reliability sets it; otherwise nothing is written)."""
    def write(what: str, **figures: Any) -> None:
        out = os.environ.get("HEADSWEEP_RELIABILITY_OUT")
        if out:
            with open(out, "a", encoding="utf-8") as f:
                f.write(json.dumps({"test": request.node.nodeid, "what": what, **figures}) + "\n")
    return write


@dataclass
class S3Server:
    """An S3-compatible server (moto's) on 127.0.0.1, reached as users reach MinIO or Ceph: AWS_ENDPOINT_URL."""

    endpoint: str
    env: dict[str, str]  # what a process needs to reach it
    bucket: str = "headsweep"

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])

    def keys(self, prefix: str) -> dict[str, int]:
        """Every object under ``prefix`` (a key prefix in the bucket) with its size."""
        import pyarrow.fs

        fs, path = pyarrow.fs.FileSystem.from_uri(self.uri(prefix))
        found = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True, allow_not_found=True))
        return {i.path.split("/", 1)[1]: i.size for i in found if i.type == pyarrow.fs.FileType.File}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """moto's standalone S3 server on a free loopback port, one bucket; its address and keys in this process's
    environment for the session (and in ``env`` for subprocesses)."""
    import socket
    import subprocess
    import sys
    import time

    pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install -e '.[test]')")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("s3") / "moto.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.time() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, log.read_text()[-2000:]
                time.sleep(0.2)
        import pyarrow.fs

        server = S3Server(env["AWS_ENDPOINT_URL"], env)
        fs = pyarrow.fs.S3FileSystem(endpoint_override=server.endpoint, scheme="http", access_key="test",
                                     secret_key="test", region="us-east-1", allow_bucket_creation=True)
        fs.create_dir(server.bucket)
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Outage:
    """A TCP relay on 127.0.0.1 in front of a server, which can take the server away: :meth:`stop` cuts every open
    connection and resets every new one at once (as a server that has died or is restarting does), counting them,
    until :meth:`start`. Clients reach the server through ``port``."""

    def __init__(self, target: tuple[str, int]) -> None:
        import socket
        import threading

        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.down = threading.Event()
        self.closed = threading.Event()
        self.lock = threading.Lock()
        self.open: set[Any] = set()
        self.reset = 0  # connections that met the outage (cut while open, or reset on arrival)
        threading.Thread(target=self._accept, daemon=True).start()

    @staticmethod
    def _kill(conn: Any) -> None:
        import socket
        import struct

        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
        except OSError:
            pass
        conn.close()

    def _accept(self) -> None:
        import socket
        import threading

        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down.is_set():
                self.reset += 1
                self._kill(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                self._kill(client)
                continue
            upstream.settimeout(None)
            with self.lock:
                self.open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: Any, sink: Any) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self.lock:
                self.open.discard(source)
                self.open.discard(sink)
            for conn in (source, sink):
                try:
                    conn.close()
                except OSError:
                    pass

    def stop(self) -> None:
        self.down.set()
        with self.lock:
            cut, self.open = list(self.open), set()
        self.reset += len(cut) // 2
        for conn in cut:
            self._kill(conn)

    def start(self) -> None:
        self.down.clear()

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
        self.stop()


@pytest.fixture
def s3_outage(s3_server):
    """An :class:`Outage` in front of the S3 server; ``env``: what a process needs to reach S3 through it."""
    from urllib.parse import urlparse

    address = urlparse(s3_server.endpoint)
    outage = Outage((address.hostname, address.port))
    outage.env = dict(s3_server.env, AWS_ENDPOINT_URL=f"http://127.0.0.1:{outage.port}")
    try:
        yield outage
    finally:
        outage.close()


@pytest.fixture(scope="session")
def quickstart_smoke(tmp_path_factory: pytest.TempPathFactory):
    """The quickstart sweep's smoke test (2 trials x 2 evaluations, a base model, the report at its end), run once
    through the real command: (the finished process, its results root). The smoke test of the shipped sweeps and
    the analysis tests share it; they only read it."""
    from tests.test_trainable import run_cli

    root = tmp_path_factory.mktemp("quickstart")
    return run_cli("sweeps/quickstart.yaml", "--smoke-test", "--results", str(root)), root


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_command() -> Path:
    """Ray's command line beside this Python (skips the test where there is none)."""
    import sys

    found = Path(sys.executable).parent / "ray"
    if not found.exists():
        pytest.skip(f"no Ray command line at {found}")
    return found


def _environ(pid: int) -> list[bytes] | None:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:  # gone, or another user's (which this user's `ray stop` cannot stop either)
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and int(p.name) != os.getpid()]


def stop_ray_in(ray_tmpdir: str | Path, timeout: float = 30) -> None:
    """Stop the Ray a test started with ``RAY_TMPDIR=ray_tmpdir``: its daemons, workers and the nodes a fake
    autoscaler added, found by that setting in their environment or that folder in their command line. Never
    `ray stop`, which stops every Ray process on the machine, a sweep running beside the tests included."""
    folder = str(ray_tmpdir)
    mark = f"RAY_TMPDIR={folder}".encode()

    def started_there() -> list[int]:
        return [pid for pid in _pids() if mark in (_environ(pid) or []) or f"{folder}/" in _cmdline(pid)]

    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, timeout)):
        for pid in started_there():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait
        while started_there() and time.time() < deadline:
            time.sleep(0.2)


def ray_not_started_by_tests() -> list[int]:
    """PIDs of Ray daemons (raylet, GCS server) on this machine that no test of this session started."""
    daemons = ("/raylet/raylet ", "/gcs/gcs_server ")
    found = []
    for pid in _pids():
        environ = _environ(pid)
        if environ is not None and any(d in _cmdline(pid) for d in daemons) \
                and f"HEADSWEEP_TEST_SESSION={TEST_SESSION}".encode() not in environ:
            found.append(pid)
    return found


RAY_AUTH_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def user_environment(home: Path, ray_tmp: str | Path, **extra: str) -> dict[str, str]:
    """This process's environment as a user's shell on a node has it: their HOME (where Ray keeps
    ``.ray/auth_token``), the node's Ray folder, Ray kept on 127.0.0.1, no RAY_ADDRESS and no RAY_AUTH_* variable
    (Ray's defaults) unless ``extra`` sets them."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", *RAY_AUTH_VARIABLES)}
    return {**env, "HOME": str(home), "RAY_TMPDIR": str(ray_tmp), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **extra}


def generate_ray_token(home: Path) -> str:
    """A Ray authentication token in ``home/.ray/auth_token``, made by Ray's own `ray get-auth-token --generate` (as
    a user does, or Ray itself on a first private ``ray.init()``)."""
    import subprocess

    made = subprocess.run([str(ray_command()), "get-auth-token", "--generate"], env={**os.environ, "HOME": str(home)},
                          capture_output=True, text=True, timeout=120, check=False)
    assert made.returncode == 0 and (home / ".ray" / "auth_token").is_file(), made.stderr[-2000:]
    return (home / ".ray" / "auth_token").read_text().strip()


def start_ray_head(env: dict[str, str], port: int, *flags: str) -> str:
    """`ray start --head` on 127.0.0.1:``port`` in ``env`` (see :func:`user_environment`), otherwise with Ray's
    defaults; returns what it printed. The caller stops it with :func:`stop_ray_in` (env's RAY_TMPDIR)."""
    import subprocess

    started = subprocess.run([str(ray_command()), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                              "--disable-usage-stats", *flags], env=env, capture_output=True, text=True, timeout=300,
                             check=False)
    assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
    return started.stdout + started.stderr
