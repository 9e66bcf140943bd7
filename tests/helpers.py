"""What the tests share: the tiny configs and sweep, the project's paths, running the CLI, reading a sweep's
table, Ray's command line and stopping only the Rays the tests started. Fixtures and hooks stay in conftest.py;
tests import this module as ``tests.helpers``, never conftest."""

from __future__ import annotations

import contextlib
import copy
import glob
import json
import os
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from model import metrics as M
from model.checkpoint import load_checkpoint
from model.config import Config, apply_overrides, config_from_dict
from model.train import train

if TYPE_CHECKING:
    import pandas as pd

# Every Ray a test starts, in this process or a child, stays on 127.0.0.1; read by Ray when it is first imported,
# so set before any test module imports it (nothing imported above imports Ray).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Every process a test starts inherits this mark: a Ray on this machine without it is someone else's (a sweep
# running beside the tests), which no test may stop.
TEST_SESSION = os.environ.setdefault("HEADSWEEP_TEST_SESSION", f"{os.getpid()}-{secrets.token_hex(4)}")
# Two test processes (pytest-xdist) share the machine's cores, and every test computes on one thread (conftest);
# so does every process a test starts (a sweep's driver scoring the test split, a CLI): a second thread would wait
# on the core the other test process holds (a smoke sweep's test-set scoring ran several times slower with two
# threads beside a busy core than with one). Trials set their own threads (resources.cpus).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The trials every test starts train in scratch folders under one folder of this session (removed when it ends), not
# among the machine's temporary files: a test that kills a trial leaves its folder there (sweeps/scratch.py).
SESSION_SCRATCH = Path(tempfile.gettempdir()) / f"headsweep-tests-{TEST_SESSION}.scratch"
os.environ.setdefault("HEADSWEEP_SCRATCH", str(SESSION_SCRATCH))


# Fixtures that run a sweep, train a model or start a server: a test that uses one is slow by that alone
SLOW_FIXTURES = {"quickstart_smoke", "sweep_dir", "trained_run", "model_and_sources", "s3_server", "s3_outage"}

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


REPO = Path(__file__).resolve().parent.parent


LEARN = ("model.d_model=64", "model.d_ff=128", "model.dropout=0.0", "gates.mode=learned",
         "gates.attention=[enc_self, dec_self, dec_cross]", "data.synthetic.train_size=3000", "data.vocab_size=300",
         "data.max_tokens=1024", "data.synthetic.valid_size=100", "eval.max_sentences=100", "eval.batch_size=50",
         "train.lr=6e-3", "train.warmup_steps=30", "train.max_steps=600", "train.eval_every=600", "train.threads=2")


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


def process_environ(pid: int) -> list[bytes] | None:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:  # gone, or another user's (which this user's `ray stop` cannot stop either)
        return None


def process_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def process_ids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and int(p.name) != os.getpid()]


def stop_ray_in(ray_tmpdir: str | Path, timeout: float = 30) -> None:
    """Stop the Ray a test started with ``RAY_TMPDIR=ray_tmpdir``: its daemons, workers and the nodes a fake
    autoscaler added, found by that setting in their environment or that folder in their command line. Never
    `ray stop`, which stops every Ray process on the machine, a sweep running beside the tests included."""
    folder = str(ray_tmpdir)
    mark = f"RAY_TMPDIR={folder}".encode()

    def started_there() -> list[int]:
        return [pid for pid in process_ids() if mark in (process_environ(pid) or []) or f"{folder}/" in process_cmdline(pid)]

    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, timeout)):
        for pid in started_there():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait
        while started_there() and time.time() < deadline:
            time.sleep(0.2)


@contextlib.contextmanager
def loopback_cluster(monkeypatch: pytest.MonkeyPatch, **head_args: Any):
    """A multi-node Ray on 127.0.0.1 in this process (``ray.cluster_utils.Cluster``, head started with
    ``head_args``), in a Ray folder of its own (RAY_TMPDIR, short enough for Ray's socket paths): Ray records the
    address of such a cluster in ``<Ray folder>/ray_current_cluster``, where a sweep started elsewhere on this
    machine without --address would find and join it (the CLI joins a cluster started on its node). Shut down and
    its folder removed at the end."""
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep the test cluster on loopback
    folder = tempfile.mkdtemp(prefix="rc", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", folder)
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"include_dashboard": False, **head_args})
    try:
        yield cluster
    finally:
        cluster.shutdown()
        stop_ray_in(folder)
        shutil.rmtree(folder, ignore_errors=True)


def ray_not_started_by_tests() -> list[int]:
    """PIDs of Ray daemons (raylet, GCS server) on this machine that no test of this session started."""
    daemons = ("/raylet/raylet ", "/gcs/gcs_server ")
    found = []
    for pid in process_ids():
        environ = process_environ(pid)
        if environ is not None and any(d in process_cmdline(pid) for d in daemons) \
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


SHARED_DATA = REPO.parent / "shared" / "data"


NEEDS_DATA = {"multi30k_en_de": SHARED_DATA / "multi30k", "wmt_en_ru": SHARED_DATA / "en-ru",
              "en_ru_cpu": SHARED_DATA / "en-ru"}


def run_cli(*args: str, env: dict[str, str | None] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """The sweep command, run to its end; ``env`` adds variables to this process's, less its RAY_ADDRESS (None:
    leaves one out)."""
    inherited = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    full_env = {**inherited, "HEADSWEEP_DATA": str(SHARED_DATA), "RAY_DEDUP_LOGS": "0", **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}
    return subprocess.run([sys.executable, str(REPO / "trainable.py"), *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def start_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The sweep command in the background (to be interrupted), output captured."""
    env = {**os.environ, "HEADSWEEP_DATA": str(SHARED_DATA), **(env or {})}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, str(REPO / "trainable.py"), *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def write_sweep(path: Path, **patch: Any) -> Path:
    """A small sweep over the tiny test model: 2 evaluations per trial, one core each."""
    raw: dict[str, Any] = {
        "name": "t",
        "base": copy.deepcopy(TINY),
        "pretrain": {"set": {"train.max_steps": 6, "train.eval_every": 3}},
        "prune": {"set": {"gates.mode": "learned", "train.max_steps": 6, "train.eval_every": 3}},
        "space": {"gates.penalty": {"loguniform": [0.01, 0.5]}, "train.lr": {"loguniform": [1.0e-4, 1.0e-2]},
                  "data.max_tokens": {"choice": [128, 256]}},
        "search": {"num_samples": 2, "max_concurrent": 2, "seed": 3},
        "resources": {"cpus": 1},
        "wandb": {"mode": "disabled"},
    }
    raw.update(patch)
    path.write_text(yaml.safe_dump(raw))
    return path


def wandb_records(run_dir: Path) -> list[Any]:
    """Every record of an offline W&B run, read from its transaction log (LevelDB log format of records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (log,) = glob.glob(str(run_dir / "run-*.wandb"))
    data = Path(log).read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block  # block trailer
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            records.append(record)
    return records


def wandb_history(run_dir: Path) -> list[dict[str, Any]]:
    """History rows of an offline W&B run."""
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            for record in wandb_records(run_dir) if record.WhichOneof("record_type") == "history"]


def check_table(experiment: Path, trials: int, evaluations: int = 2, weights: bool = True) -> pd.DataFrame:
    import pandas as pd  # imported here, as the sweep layer: the GPU check runs the model-level tests without them

    from sweeps.results import checkpoint_file

    df = pd.read_csv(experiment / "trials.csv")
    prune = df[df["stage"] == "prune"]
    assert len(prune) == trials and (prune["status"] == "completed").all(), df[["trial_id", "status", "error"]]
    for _, row in prune.iterrows():
        assert Path(row["checkpoint"]).is_dir()
        if weights:
            checkpoint_file(row["checkpoint"])  # holds one training checkpoint
        assert row["git_commit"] and "torch" in json.loads(row["versions"])
        assert 0 <= row[M.OPEN_HEADS] and row["evaluations"] == evaluations
        leftovers = [p.name for p in Path(row["trial_path"]).iterdir() if p.name == "run" or p.name.startswith("report-")]
        assert not leftovers  # the trial's scratch folder stays out of the storage
    return df


def marked_processes(marker: str, title: str = "") -> list[int]:
    """PIDs of the processes started with ``HEADSWEEP_TEST_RUN=marker`` whose command line begins with ``title``
    (a sweep's driver, Ray's own processes and its workers inherit the driver's environment; other Ray sessions on
    the machine are left alone)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if not (proc / "cmdline").read_bytes().decode(errors="replace").startswith(title):
                continue
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"HEADSWEEP_TEST_RUN={marker}".encode() in environ:
            pids.append(int(proc.name))
    return pids


def trial_workers(marker: str) -> list[int]:
    """PIDs of the Ray worker processes running a trial of the sweep marked ``marker``."""
    return marked_processes(marker, "ray::ImplicitFunc")


QUIET = dict(log=lambda _: None)


class Interrupt(Exception):
    pass


def state_of(path):
    return load_checkpoint(path)["model"]


def interrupt_then_resume(cfg, out, stop_when, init_from=None, teacher=None):
    """Run ``cfg`` in ``out`` (from ``init_from``'s weights, distilling from ``teacher``), kill it at the first
    report where ``stop_when(metrics)``, then resume it."""

    def report(metrics, checkpoint):
        if stop_when(metrics):
            raise Interrupt

    with pytest.raises(Interrupt):
        train(cfg, out, report=report, init_from=init_from, teacher=teacher, **QUIET)
    return train(cfg, out, resume=True, teacher=teacher, **QUIET)


TINY_SWEEP: dict[str, Any] = {
    "name": "t",
    "base": copy.deepcopy(TINY),
    "prune": {"set": {"gates.mode": "learned", "train.max_steps": 6}},
    "space": {"gates.penalty": {"loguniform": [0.001, 0.5]}, "train.lr": {"loguniform": [1.0e-4, 1.0e-2]},
              "data.max_tokens": {"choice": [256, 512]}},
}


def tiny_sweep(patch: dict[str, Any] | None = None, drop: tuple[str, ...] = (), **kwargs):
    """The tiny sweep (TINY_SWEEP) with top-level keys replaced by ``patch`` and ``drop``ped, validated."""
    raw = copy.deepcopy(TINY_SWEEP)
    for key in drop:
        raw.pop(key)
    raw.update(copy.deepcopy(patch or {}))
    from sweeps.validate import sweep_from_dict

    return sweep_from_dict(raw, **kwargs)
