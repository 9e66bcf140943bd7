"""Placing a sweep on a Ray cluster: trials checked against the nodes and the autoscaler's node types, local
storage refused where other machines run trials, what travels to the workers in runtime_env, and a sweep whose
trials wait for the nodes that Ray's fake multi-node autoscaler adds (RAY_FAKE_CLUSTER=1)."""

from __future__ import annotations

import copy
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
import yaml

from model.config import ConfigError
from sweeps.placement import check_placement, check_shared_storage, read_autoscaler
from tests.helpers import (
    REPO,
    check_table,
    free_port,
    generate_ray_token,
    ray_command,
    run_cli,
    start_ray_head,
    stop_ray_in,
    user_environment,
    write_sweep,
)

CPU_HEAD = {"CPU": 0.0, "host": "10.0.0.1"}


def test_the_launcher_configs_worker_types_are_what_the_driver_checks_trials_against(tmp_path: Path):
    shutil.copy(REPO / "sweeps" / "cluster.yaml", tmp_path / "ray_bootstrap_config.yaml")
    autoscaler = read_autoscaler(tmp_path / "ray_bootstrap_config.yaml")
    assert autoscaler.provider == "aws" and autoscaler.adds_machines
    assert [(t.name, t.resources, t.max_workers) for t in autoscaler.node_types] == [
        ("gpu_worker", {"CPU": 4.0, "GPU": 1.0}, 8)]  # the head is not a type trials wait for
    note = check_placement("resources", 1, 1, [CPU_HEAD], autoscaler, declared=False)
    assert "trials wait for the autoscaler to add gpu_worker (4 CPUs and 1 GPU)" in note
    assert check_placement("resources", 1, 0.5, [CPU_HEAD, {"CPU": 4, "GPU": 1}], autoscaler, False) == ""
    with pytest.raises(ConfigError, match=r"`resources`: 8 CPUs and 1 GPU per trial.*gpu_worker"):
        check_placement("resources", 8, 1, [CPU_HEAD], autoscaler, declared=False)
    assert read_autoscaler(tmp_path / "missing.yaml") is None
    (tmp_path / "broken.yaml").write_text("available_node_types: [\n")
    assert read_autoscaler(tmp_path / "broken.yaml") is None


def test_no_tracked_symlink_dangles_or_leaves_the_repository():
    """`ray up` reads every file of its file mounts, and a clone holds links as they were committed: one that
    points outside the repository (into a machine's cache) or at nothing fails `ray up` on every other machine."""
    listed = subprocess.run(["git", "ls-files", "-s", "-z"], cwd=REPO, capture_output=True, check=False)
    if listed.returncode != 0:
        pytest.skip(f"{REPO} is not a git checkout")
    links = [entry.split("\t", 1)[1] for entry in listed.stdout.decode().split("\0") if entry.startswith("120000 ")]
    bad = []
    for name in links:
        path = REPO / name
        target = (path.parent / os.readlink(path)).resolve() if path.is_symlink() else None
        if target is None or not target.exists() or not target.is_relative_to(REPO.resolve()):
            bad.append(f"{name} -> {os.readlink(path) if path.is_symlink() else '(not a link here)'}")
    assert not bad, bad


def test_the_launcher_copies_to_the_nodes_what_builds_the_package_and_nothing_else(tmp_path: Path):
    """sweeps/cluster.yaml's file mounts of the project are exactly what `pip install -e ~/headsweep` needs (the
    package's modules, pyproject.toml and the readme it names): a wheel builds from them alone."""
    import tomllib

    config = yaml.safe_load((REPO / "sweeps" / "cluster.yaml").read_text())
    project = {remote.removeprefix("~/headsweep/"): local for remote, local in config["file_mounts"].items()
               if remote.startswith("~/headsweep/")}
    assert all(local == f"./{name}" for name, local in project.items()), project  # each to its own name
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    setup = meta["tool"]["setuptools"]
    needed = {"pyproject.toml", meta["project"]["readme"], *setup["packages"],
              *(f"{m}.py" for m in setup["py-modules"])}
    assert set(project) == needed
    assert not [r for r in config["file_mounts"] if r.rstrip("/") in ("~/headsweep", "~")]  # never the whole tree
    mounted = tmp_path / "headsweep"
    mounted.mkdir()
    for name in project:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, mounted / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, mounted / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp_path / "wheel"), str(mounted)], capture_output=True, text=True, timeout=300,
                           check=False)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("headsweep-*.whl")
    with zipfile.ZipFile(wheel) as z:
        assert {"trainable.py", "model/train.py", "sweeps/tuner.py", "analysis/report.py",
                "sweeps/quickstart.yaml"} <= set(z.namelist())


def test_trials_no_node_can_hold_are_refused_unless_an_autoscaler_is_declared():
    nodes = [{"CPU": 2.0, "host": "127.0.0.1"}]
    with pytest.raises(ConfigError, match=r"`pretrain.resources`: 1 CPU and 1 GPU per trial.*nodes: 2 CPUs"):
        check_placement("pretrain.resources", 1, 1, nodes, None, declared=False)
    with pytest.raises(ConfigError, match="3 CPUs per trial"):  # all of a trial's CPUs must be on one node
        check_placement("resources", 3, 0, nodes + [{"CPU": 2.0, "host": "127.0.0.2"}], None, False)
    note = check_placement("resources", 1, 1, nodes, None, declared=True)
    assert "resources.autoscale: true" in note


def test_local_storage_is_refused_where_trials_run_on_other_machines(tmp_path: Path):
    two = [{"CPU": 2.0, "host": "10.0.0.1"}, {"CPU": 2.0, "host": "10.0.0.2"}]
    with pytest.raises(ConfigError, match=r"`storage`.*2 machines \(10.0.0.1, 10.0.0.2\).*storage_shared: true"):
        check_shared_storage("/home/me/results", two, None, shared=False)
    check_shared_storage("s3://bucket/r", two, None, shared=False)
    check_shared_storage("/mnt/nfs/results", two, None, shared=True)
    same_machine = [{"CPU": 1.0, "host": "127.0.0.1"}, {"CPU": 1.0, "host": "127.0.0.1"}]
    check_shared_storage("/home/me/results", same_machine, None, shared=False)
    shutil.copy(REPO / "sweeps" / "cluster.yaml", tmp_path / "aws.yaml")  # one node now, cloud workers later
    with pytest.raises(ConfigError, match="nodes its autoscaler adds"):
        check_shared_storage("/home/me/results", same_machine[:1], read_autoscaler(tmp_path / "aws.yaml"), False)
    local = {"provider": {"type": "local", "head_ip": "127.0.0.1", "worker_ips": ["127.0.0.1"]},
             "available_node_types": {"w": {"resources": {"CPU": 1}, "max_workers": 1}}}
    (tmp_path / "local.yaml").write_text(yaml.safe_dump(local))
    check_shared_storage("/home/me/results", same_machine, read_autoscaler(tmp_path / "local.yaml"), False)


def test_what_the_driver_sends_to_workers_holds_no_secret(monkeypatch):
    from sweeps.raycluster import forwarded_environment

    for name, value in {"HEADSWEEP_DATA": "/data", "HEADSWEEP_CACHE": "/c", "WANDB_MODE": "offline",
                        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "WANDB_API_KEY": "k" * 40,
                        "AWS_SECRET_ACCESS_KEY": "s", "AWS_ACCESS_KEY_ID": "a", "HEADSWEEP_TOKEN": "t",
                        "RAY_AUTH_TOKEN": "r", "RAY_AUTH_TOKEN_PATH": "/home/me/.ray/auth_token", "RAY_AUTH_MODE": "token",
                        "HOME": "/home/me"}.items():
        monkeypatch.setenv(name, value)
    sent = forwarded_environment()
    assert {"HEADSWEEP_DATA", "HEADSWEEP_CACHE", "WANDB_MODE", "AWS_ENDPOINT_URL"} <= set(sent)
    assert not {"WANDB_API_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "HEADSWEEP_TOKEN", "HOME"} & set(sent)
    assert not [k for k in sent if k.startswith("RAY_")]  # Ray's token reaches nodes through their own setup


@pytest.mark.slow
@pytest.mark.ray_head
def test_a_sweep_waits_for_the_nodes_rays_fake_autoscaler_adds(tmp_path: Path, record):
    """Ray's documented way to test autoscaling on one machine: `RAY_FAKE_CLUSTER=1 ray start --head
    --autoscaling-config=...`, here with a head that offers no CPU, so that every trial waits for a worker node of
    the config's type. The driver (as on the head of a `ray up` cluster: no RAY_ADDRESS, the config in
    ~/ray_bootstrap_config.yaml) joins the cluster, says that trials wait for the autoscaler, and the sweep finishes
    on the nodes it adds; with --local, a driver on the same node starts a private Ray instead."""
    ray_cli, port = ray_command(), free_port()
    home = tmp_path / "home"
    home.mkdir()
    config = {"cluster_name": "fake", "max_workers": 2, "upscaling_speed": 1.0, "idle_timeout_minutes": 5,
              "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                           "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{port}"},
              "auth": {}, "head_node_type": "ray.head.default",
              "available_node_types": {
                  "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
                  "cpu_worker": {"resources": {"CPU": 1, "object_store_memory": 100_000_000}, "node_config": {},
                                 "min_workers": 0, "max_workers": 2}},
              "docker": {}, "file_mounts": {}, "cluster_synced_files": [], "rsync_exclude": [], "rsync_filter": [],
              "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
              "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": []}
    bootstrap = home / "ray_bootstrap_config.yaml"
    bootstrap.write_text(yaml.safe_dump(config))
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths live below it
    generate_ray_token(home)  # Ray's defaults then turn token authentication on
    env = user_environment(home, ray_tmp, RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
    loopback = {k: env[k] for k in ("HOME", "RAY_TMPDIR", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_FAKE_CLUSTER",
                                    "AUTOSCALER_UPDATE_INTERVAL_S")}
    loopback.update(RAY_AUTH_MODE=None, RAY_AUTH_TOKEN=None, RAY_AUTH_TOKEN_PATH=None)  # run_cli: left out
    try:
        started = start_ray_head(env, port, "--num-cpus=0", f"--autoscaling-config={bootstrap}",
                                 "--include-dashboard=false")
        assert "Token authentication is enabled" in started
        sweep = write_sweep(tmp_path / "s.yaml", search={"num_samples": 2, "max_concurrent": 2, "seed": 1})
        proc = run_cli(str(sweep), "--no-report", "--results", str(tmp_path / "r"), env=loopback, timeout=480)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert f"joined the Ray cluster at 127.0.0.1:{port} (started on this node): 1 node, 0 CPUs" in proc.stdout
        waits = proc.stdout.count("resources: no node offers 1 CPU yet (nodes: 0 CPUs); trials wait for the "
                                  "autoscaler to add cpu_worker (1 CPU)")
        assert waits == 1, proc.stdout[:3000]
        df = check_table(tmp_path / "r" / "t", trials=2)
        status = subprocess.run([str(ray_cli), "status", f"--address=127.0.0.1:{port}"],
                                env={**env, "RAY_AUTH_MODE": "token"},  # Ray's CLI presents the token when told
                                capture_output=True, text=True, timeout=120, check=False)
        added = status.stdout.count("cpu_worker")
        assert added >= 1, status.stdout[-2000:]
        # with --local, the same node's driver starts a private Ray instead of joining
        alone = write_sweep(tmp_path / "alone.yaml", pretrain={"enabled": False},
                            search={"num_samples": 1, "max_concurrent": 1})
        private = run_cli(str(alone), "--no-report", "--results", str(tmp_path / "private"), "--local", env=loopback)
        privates = private.stdout.count("started a private local Ray")
        assert private.returncode == 0 and privates == 1, private.stdout[-3000:] + private.stderr[-3000:]
        assert "joined the Ray cluster" not in private.stdout
    finally:
        stop_ray_in(ray_tmp)  # this test's Ray only: `ray stop` would stop every Ray on the machine
        shutil.rmtree(ray_tmp, ignore_errors=True)
    record("driver on the head of Ray's fake autoscaler (no RAY_ADDRESS, a head without CPUs): joins it, trials wait "
           "for added worker nodes; with --local a private Ray", wait_notes=waits,
           trials_completed=int((df["stage"] == "prune").sum()), worker_lines_in_ray_status=added,
           private_with_local=privates)


@pytest.mark.slow
@pytest.mark.ray_head
def test_a_corpus_missing_on_the_node_that_runs_the_trial_is_refused_naming_the_node(tmp_path: Path, monkeypatch):
    """On a cluster the driver cannot look at the workers' disks: a corpus of files that the trial's node lacks
    fails that trial with the node and the path named, and the sweep stops with that reason."""
    from tests.helpers import TINY, loopback_cluster

    base = copy.deepcopy(TINY)
    base["data"].pop("synthetic")
    missing = tmp_path / "only-on-the-driver"
    base["data"].update(corpus="files", files={s: str(missing / s) for s in ("train", "valid", "test")})
    sweep = write_sweep(tmp_path / "s.yaml", base=base, search={"num_samples": 1, "max_concurrent": 1})
    with loopback_cluster(monkeypatch, num_cpus=1) as cluster:
        proc = run_cli(str(sweep), "--address", cluster.address, "--no-report", "--results", str(tmp_path / "r"))
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"on node [0-9.]+ \(\S+\): data\.files\.train: no such file", proc.stderr), proc.stderr[-3000:]
    assert str(missing / "train") in proc.stderr


@pytest.mark.slow
@pytest.mark.ray_head
def test_the_tests_stop_only_a_ray_they_started(tmp_path: Path):
    """A sweep may run beside the test suite: a Ray started without this session's mark counts as another's (the
    `ray up` test skips while one runs, since `ray up` and `ray down` stop every Ray of the head), and stopping a
    test's own Ray by its folder leaves the other one running."""
    from tests.helpers import process_cmdline, process_ids, ray_not_started_by_tests

    theirs, ours = (tempfile.mkdtemp(prefix="rt", dir="/tmp") for _ in range(2))
    loopback = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    unmarked = {k: v for k, v in os.environ.items() if k not in ("HEADSWEEP_TEST_SESSION", "RAY_ADDRESS")}

    def start(env: dict[str, str]) -> None:
        start_ray_head({**env, **loopback}, free_port(), "--num-cpus=0", "--include-dashboard=false")

    def daemons_in(folder: str) -> list[int]:
        return [pid for pid in process_ids() if f"{folder}/" in process_cmdline(pid)
                and ("raylet/raylet " in process_cmdline(pid) or "gcs/gcs_server " in process_cmdline(pid))]

    try:
        start({**unmarked, "RAY_TMPDIR": theirs})
        start({**os.environ, "RAY_TMPDIR": ours})
        other, own = daemons_in(theirs), daemons_in(ours)
        assert len(other) == 2 and len(own) == 2, (other, own)  # a GCS server and a raylet each
        found = ray_not_started_by_tests()
        assert set(other) <= set(found) and not set(own) & set(found), (found, other, own)
        stop_ray_in(ours)
        assert daemons_in(ours) == [] and daemons_in(theirs) == other
    finally:
        stop_ray_in(ours)
        stop_ray_in(theirs)
        for folder in (theirs, ours):
            shutil.rmtree(folder, ignore_errors=True)
