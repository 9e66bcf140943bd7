"""Shared fixtures: tiny sizes (d_model 16, 4 heads, 2 layers), CPU, fixed seeds, a private tokenizer cache."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

# first: it sets the environment every test process shares
from tests.helpers import LEARN, SESSION_SCRATCH, SLOW_FIXTURES, TEST_SESSION, tiny_config


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["HEADSWEEP_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)


_SESSION_START: list[float] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    _SESSION_START.append(time.perf_counter())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With $HEADSWEEP_RELIABILITY_OUT set, the run's own duration ends the figures file (bench/reliability.py
    states it on the page: measured, never typed in). Under pytest-xdist the controller writes it, with the
    outcomes of every worker (and removes the session's lock files); the workers write nothing."""
    if hasattr(session.config, "workerinput"):
        return
    for name in ("gate", "lock", "ray_head"):
        Path(lock_file(name)).unlink(missing_ok=True)
    shutil.rmtree(SESSION_SCRATCH, ignore_errors=True)  # the trials' scratch root (tests/helpers.py)
    out = os.environ.get("HEADSWEEP_RELIABILITY_OUT")
    if out and _SESSION_START:
        with open(out, "a", encoding="utf-8") as f:
            reporter = session.config.pluginmanager.get_plugin("terminalreporter")
            outcomes = {k: len(v) for k, v in (reporter.stats if reporter else {}).items()
                        if k in ("passed", "failed", "skipped", "error")}
            f.write(json.dumps({"session_seconds": round(time.perf_counter() - _SESSION_START[0], 1),
                                "outcomes": outcomes}) + "\n")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The `slow` marker (pyproject.toml) on every test that uses a slow fixture, besides those marked by hand
    (they start Ray, run the sweep command or train for more than a few seconds): `pytest -m "not slow"` is the
    fast loop."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def lock_file(name: str) -> str:
    """A lock file that every process of this test session (pytest-xdist's workers) opens by the same name."""
    return str(Path(tempfile.gettempdir()) / f"headsweep-tests-{TEST_SESSION}.{name}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Under pytest-xdist (`-n 2`, pyproject.toml) two tests run at once, except where they must not: every test
    holds a shared lock over its setup, call and teardown (session fixtures included), and a test marked `alone`
    (it runs `ray up`/`ray down`, which stop every Ray process on the machine) an exclusive one, which a waiting
    `alone` test takes before tests that arrive after it; a test marked `ray_head` (`ray start --head` binds Ray's
    fixed default ports for its client server and agent) also holds a lock that no other such test holds at the
    same time. Without pytest-xdist there is one test at a time anyway and no lock is taken."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return (yield)
    alone = item.get_closest_marker("alone") is not None
    with contextlib.ExitStack() as held:
        gate, lock = (held.enter_context(open(lock_file(name), "a")) for name in ("gate", "lock"))
        fcntl.flock(gate, fcntl.LOCK_EX)  # taken in turn, so that a waiting exclusive lock blocks new tests
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        if item.get_closest_marker("ray_head") is not None:
            fcntl.flock(held.enter_context(open(lock_file("ray_head"), "a")), fcntl.LOCK_EX)
        return (yield)  # closing the files releases their locks


def once_per_session(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[], Any]) -> Any:
    """``make()``, run once in this test session: under pytest-xdist the first worker to ask runs it and pickles
    its result into the session's shared temporary folder; the others wait for it and read it (the tests that use
    these runs only read them)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return make()
    shared = tmp_path_factory.getbasetemp().parent  # pytest-of-<user>/pytest-<n>: the workers' basetemps are in it
    with open(shared / f"{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = shared / f"{name}.pickle"
        if not done.exists():
            done.write_bytes(pickle.dumps(make()))
        return pickle.loads(done.read_bytes())


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory):
    """A small gated model trained on the synthetic pair (about 15 s on 2 cores), shared by the tests of
    learning, decoding and the translate command."""
    from model.train import train

    return once_per_session(tmp_path_factory, "trained_run",
                            lambda: train(tiny_config(*LEARN), tmp_path_factory.mktemp("trained"), log=lambda _: None))


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
    from tests.helpers import run_cli

    def run() -> tuple[Any, Path]:
        root = tmp_path_factory.mktemp("quickstart")
        return run_cli("sweeps/quickstart.yaml", "--smoke-test", "--results", str(root)), root

    return once_per_session(tmp_path_factory, "quickstart_smoke", run)


