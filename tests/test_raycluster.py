"""Joining a Ray cluster the way users start one: `ray start --head` with Ray's defaults, which turn token
authentication on where a token lies in the user's ~/.ray/auth_token, and a driver with no RAY_AUTH_* variable set
by the test; every way a driver reaches a cluster (no address on the head node, --address, RAY_ADDRESS), a driver
with another token or none (refused in one line), and a cluster without authentication."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from sweeps.raycluster import ClusterError, authenticate, driver_token
from tests.helpers import (
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


def test_the_driver_finds_its_token_where_rays_clients_look(tmp_path: Path, monkeypatch):
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert driver_token() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("")
    assert driver_token() is None  # an empty default file is no token
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert driver_token() == ("from-home", str(tmp_path / ".ray" / "auth_token"))
    (tmp_path / "named").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "named"))
    assert driver_token() == ("from-path", f"{tmp_path / 'named'} ($RAY_AUTH_TOKEN_PATH)")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-variable")
    assert driver_token() == ("from-variable", "$RAY_AUTH_TOKEN")
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(ClusterError, match=r"RAY_AUTH_TOKEN_PATH=.*missing: no such file"):
        driver_token()  # a named file that is not there is an error, not a fall-back to ~/.ray/auth_token
    (tmp_path / "empty").write_text("\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "empty"))
    with pytest.raises(ClusterError, match=r"empty.*RAY_AUTH_TOKEN_PATH.*is empty"):
        driver_token()


def _outputs_hold(folder: Path, secret: str) -> list[str]:
    """Files under ``folder`` whose bytes contain ``secret``."""
    return [str(p) for p in folder.rglob("*") if p.is_file() and not p.is_symlink()
            and secret.encode() in p.read_bytes()]


def _ray_status(env: dict[str, str], port: int) -> subprocess.CompletedProcess:
    return subprocess.run([str(ray_command()), "status", f"--address=127.0.0.1:{port}"], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.slow
@pytest.mark.ray_head
def test_a_default_cluster_with_token_authentication_is_joined_every_way_a_driver_reaches_it(tmp_path: Path, record):
    home, other, empty = (tmp_path / n for n in ("home", "other", "empty"))
    for h in (home, other, empty):
        h.mkdir()
    token = generate_ray_token(home)  # the user's token, as `ray get-auth-token --generate` or a first ray.init makes
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths live below it
    port = free_port()
    user = user_environment(home, ray_tmp)
    sweep = write_sweep(tmp_path / "s.yaml", pretrain={"enabled": False},
                        search={"num_samples": 1, "max_concurrent": 1, "seed": 1})
    results = tmp_path / "r"
    unset = {"RAY_AUTH_MODE": None, "RAY_AUTH_TOKEN": None, "RAY_AUTH_TOKEN_PATH": None}
    ways = {"on the head node (ray submit, ray exec)": ([], {}),
            "--address": (["--address", f"127.0.0.1:{port}"], {}),
            "RAY_ADDRESS (ray job submit)": ([], {"RAY_ADDRESS": f"127.0.0.1:{port}"})}
    try:
        started = start_ray_head(user, port, "--num-cpus=2", "--include-dashboard=false")
        assert "Token authentication is enabled for this Ray cluster" in started  # Ray's default with a token
        # Ray's own CLI presents the token only with RAY_AUTH_MODE=token (docs/cluster.md says so)
        refused_cli = _ray_status(user, port)
        assert refused_cli.returncode != 0 and "InvalidAuthToken" in refused_cli.stderr, refused_cli.stderr[-2000:]
        status = _ray_status({**user, "RAY_AUTH_MODE": "token"}, port)
        assert status.returncode == 0 and "InvalidAuthToken" not in status.stderr, status.stderr[-2000:]
        joined = refused = 0
        for i, (way, (flags, env)) in enumerate(ways.items()):
            proc = run_cli(str(sweep), *flags, "--no-report", "--results", str(results), "--set", f"name=w{i}",
                           env={**user, **unset, **env}, timeout=480)
            out = proc.stdout + proc.stderr
            assert proc.returncode == 0, f"{way}: {out[-3000:]}"
            found = " (started on this node)" if not flags and not env else ""
            assert (f"joined the Ray cluster at 127.0.0.1:{port}{found}: 1 node, 2 CPUs, 0 GPUs; token authentication "
                    f"(token from {home / '.ray' / 'auth_token'})") in proc.stdout, f"{way}: {proc.stdout[-3000:]}"
            assert token not in out
            check_table(results / f"w{i}", trials=1)
            joined += 1
        assert not _outputs_hold(results, token)  # no table, checkpoint, config, log or W&B file holds the token

        # a driver holding another token, and one holding none: one line each, at once, no retries
        generate_ray_token(other)
        for driver_home, says in ((other, "refused this driver's authentication token (from "
                                          f"{other / '.ray' / 'auth_token'})"),
                                  (empty, "requires token authentication and this driver has no token")):
            proc = run_cli(str(sweep), "--no-report", "--results", str(tmp_path / "refused"),
                           env={**user_environment(driver_home, ray_tmp), **unset}, timeout=300)
            errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
            assert proc.returncode == 2 and len(errors) == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
            assert f"the Ray cluster at 127.0.0.1:{port}" in errors[0] and says in errors[0], errors
            assert "RAY_AUTH_TOKEN" in errors[0] and "ray get-auth-token" in errors[0]
            assert "InvalidAuthToken" not in proc.stdout + proc.stderr  # Ray never got to retry
            refused += 1
    finally:
        stop_ray_in(ray_tmp)  # this test's Ray only: `ray stop` would stop every Ray on the machine
        shutil.rmtree(ray_tmp, ignore_errors=True)
    record("cluster started by `ray start --head` with Ray's defaults (token in HOME); driver with no RAY_AUTH_*",
           ways_joined=joined, refused_in_one_line=refused, files_holding_token=len(_outputs_hold(results, token)))


@pytest.mark.slow
@pytest.mark.ray_head
def test_a_cluster_without_authentication_is_joined_as_it_is(tmp_path: Path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    generate_ray_token(home)  # a token lying in HOME is not presented to a cluster that asks for none
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    port = free_port()
    off = user_environment(home, ray_tmp, RAY_AUTH_MODE="disabled")
    sweep = write_sweep(tmp_path / "s.yaml", pretrain={"enabled": False},
                        search={"num_samples": 1, "max_concurrent": 1, "seed": 1})
    try:
        started = start_ray_head(off, port, "--num-cpus=1", "--include-dashboard=false")
        assert "Token authentication is enabled" not in started
        proc = run_cli(str(sweep), "--no-report", "--results", str(tmp_path / "r"), env=off, timeout=480)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert f"joined the Ray cluster at 127.0.0.1:{port} (started on this node): 1 node, 1 CPUs, 0 GPUs" \
            in proc.stdout and "token authentication" not in proc.stdout, proc.stdout[-3000:]
        check_table(tmp_path / "r" / "t", trials=1)
        # a driver in token mode (set for Ray's CLI, say) joins as the cluster asks: in token mode its trials'
        # actors would die unstarted
        proc = run_cli(str(sweep), "--no-report", "--results", str(tmp_path / "r"), "--set", "name=tokened",
                       env={**off, "RAY_AUTH_MODE": "token"}, timeout=480)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "no authentication: the cluster asks for none (RAY_AUTH_MODE=token set aside for this driver)" \
            in proc.stdout, proc.stdout[-3000:]
        check_table(tmp_path / "r" / "tokened", trials=1)
        for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HOME", str(home))
        assert authenticate(f"127.0.0.1:{port}") == ""  # asked nothing: this process's Ray left as it was
        assert "RAY_AUTH_MODE" not in os.environ
    finally:
        stop_ray_in(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
