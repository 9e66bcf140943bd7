"""End to end, the way a user runs a cluster sweep, with Ray's own tools on this machine: an S3 server (moto's) on
127.0.0.1, `ray up` of the shipped `sweeps/cluster.yaml` (its file mounts, rsync filter and start commands, token
authentication included) with Ray's `local` provider in place of AWS, over SSH to 127.0.0.1 (an sshd and a key of
the test's, logging in to a HOME of the test's), run from a copy of the repository's tracked files (a fresh clone)
by a user whose HOME holds nothing but the Ray token `ray get-auth-token --generate` made; worker nodes that join
from another folder with a clean environment and another HOME holding the token the file mount copies; then the
README's `ray submit CLUSTER.yaml trainable.py sweeps/quickstart.yaml --smoke-test --results s3://...` as written,
`ray job submit --working-dir . -- python trainable.py ...` against the same cluster, and `ray down`. No RAY_AUTH_*
variable is set for the launcher or the driver; Ray's own `ray job submit` gets RAY_AUTH_MODE=token, as
docs/cluster.md tells users.

Needs root (an sshd that logs in as root; the login's HOME is set to the test's folder), OpenSSH's server and rsync
(Debian: openssh-server rsync; .ci/run installs them) and Ray's full install (`.[cluster]`); it skips, saying which
is missing, otherwise. It also skips while a Ray that no test started runs on this machine (a sweep beside the
tests): `ray up` and `ray down` stop every Ray process of the head node, which here is this machine."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sweeps.storage import download, read_bytes
from tests.helpers import REPO, free_port, generate_ray_token, ray_not_started_by_tests, stop_ray_in, user_environment

pytestmark = pytest.mark.slow  # every test here runs sweeps or a cluster

RELAY = """import os, socket, sys, threading
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
def up():
    while (d := os.read(0, 65536)):
        s.sendall(d)
    s.shutdown(socket.SHUT_WR)
threading.Thread(target=up, daemon=True).start()
while (d := s.recv(65536)):
    os.write(1, d)
"""

# A worker node that joins the head on 127.0.0.1. `ray start --address` refuses to start a worker while Ray is
# kept on loopback (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), and without that it replaces 127.0.0.1 by the machine's
# address; so the node is started the way Ray's own multi-node test helpers (ray.cluster_utils, the fake
# autoscaler) start theirs: a raylet of its own, through ray._private.node.Node, left running until the test stops it.
WORKER = """import os, sys
import ray._private.node, ray._private.parameter
params = ray._private.parameter.RayParams(gcs_address=sys.argv[1], node_ip_address="127.0.0.1", num_cpus=1,
    temp_dir=os.environ["RAY_TMPDIR"],  # its own session folder, as on another machine (default: the head's)
    num_gpus=0, object_store_memory=150 * 1024 * 1024, min_worker_port=0, max_worker_port=0,
    include_log_monitor=False, node_manager_port=0)
ray._private.node.Node(params, head=False, shutdown_at_exit=False, spawn_reaper=False)
print("joined", sys.argv[1], flush=True)
"""


def fresh_clone(dest: Path) -> None:
    """The repository's tracked files as the working tree has them, symlinks copied as links: what a clone holds."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=False)
    if listed.returncode != 0:
        pytest.skip(f"{REPO} is not a git checkout: no tracked files to clone")
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = REPO / name
        if source.exists() or source.is_symlink():  # a file deleted in the working tree is not copied
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name, follow_symlinks=False)


def local_cluster(shipped: Path, gcs: int, dashboard: int, objects: int, auth: dict[str, str]) -> dict:
    """The shipped launcher config as a user of on-premise machines adapts it (docs/cluster.md): Ray's `local`
    provider with this machine as the head and no workers, the test's SSH login, free ports for the head; the
    project already on the 'image' (this machine's venv), so no setup commands. Its file mounts, rsync filter and
    head start command are the shipped ones."""
    config = yaml.safe_load(shipped.read_text())
    for key in ("available_node_types", "head_node_type"):
        config.pop(key)
    head = []
    for command in config["head_start_ray_commands"]:
        if "ray start" in command:
            for old, new in ((r"--port=\d+", f"--port={gcs}"), (r"--object-manager-port=\d+",
                                                                 f"--object-manager-port={objects}")):
                command, found = re.subn(old, new, command)
                assert found == 1, f"sweeps/cluster.yaml's head start command has no {old}: {command}"
            command += (f" --node-ip-address=127.0.0.1 --include-dashboard=true --dashboard-port={dashboard} "
                        "--disable-usage-stats")
        head.append(command)
    return {**config, "cluster_name": f"hs-e2e-{gcs}", "max_workers": 0,
            "provider": {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []}, "auth": auth,
            "setup_commands": [], "head_start_ray_commands": head, "worker_start_ray_commands": []}


def _missing() -> str:
    if os.geteuid() != 0:
        return "needs root (an sshd of its own for the test cluster, logging in as root to a HOME of the test's)"
    for tool in ("sshd", "rsync", "ssh", "ssh-keygen"):
        if not (shutil.which(tool) or Path("/usr/sbin", tool).exists()):
            return f"needs {tool} (Debian: apt-get install openssh-server rsync)"
    try:
        import aiohttp  # noqa: F401 - `ray job submit` and the dashboard: ray[default]
    except ImportError:
        return "needs Ray's full install for `ray job submit`: pip install -e '.[cluster]'"
    return ""


def _run(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """The command's result; one that runs past ``timeout`` is killed and returns 124 with what it printed."""
    try:
        return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        text = (lambda b: b.decode(errors="replace") if isinstance(b, bytes) else (b or ""))
        return subprocess.CompletedProcess(cmd, 124, text(exc.stdout), text(exc.stderr) + f"\n(timed out: {timeout} s)")


@pytest.mark.skipif(bool(_missing()), reason=_missing() or "runs")
@pytest.mark.ray_head
@pytest.mark.alone
def test_ray_up_submit_job_submit_and_down_on_a_local_cluster_with_s3(s3_server, record):
    if others := ray_not_started_by_tests():
        pytest.skip(f"another Ray runs on this machine (PIDs {others}): `ray up` and `ray down` stop every Ray "
                    f"process of the head node, which here is this machine")
    venv_bin = Path(sys.executable).parent
    ray_cli = str(venv_bin / "ray")
    root = Path(tempfile.mkdtemp(prefix="hs-e2e-", dir="/tmp"))
    home, laptop, key, clone = root / "home", root / "laptop", root / "id_ed25519", root / "clone"
    gcs, dashboard, sshd_port, objects = free_port(), free_port(), free_port(), free_port()
    home.mkdir()
    laptop.mkdir()
    fresh_clone(clone)
    token = generate_ray_token(laptop)  # the user's one step before `ray up` (sweeps/cluster.yaml's first lines)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "host_key")], check=True)
    shutil.copy(f"{key}.pub", root / "authorized_keys")
    head_tmp = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))  # Ray's folder of the head (short: socket paths)
    # the head's own environment, as a node's image would set it: the project's Python, its S3 credentials; no Ray
    # authentication variable (the token comes with the file mount)
    (home / ".bashrc").write_text("\n".join([
        'cd "$HOME"', f"export PATH={venv_bin}:$PATH", f"export RAY_TMPDIR={head_tmp}",
        "export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0", "export WANDB_MODE=offline",
        *(f"export {k}={v}" for k, v in s3_server.env.items())]) + "\n")
    (root / "relay.py").write_text(RELAY)
    sshd_config = root / "sshd_config"
    sshd_config.write_text("\n".join([
        f"Port {sshd_port}", "ListenAddress 127.0.0.1", f"HostKey {root / 'host_key'}", "AllowUsers root",
        "PermitRootLogin prohibit-password", f"AuthorizedKeysFile {root / 'authorized_keys'}",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
        f"PidFile {root / 'sshd.pid'}", f"SetEnv HOME={home}"]) + "\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
    with open(root / "sshd.log", "w") as sshd_log:
        sshd = subprocess.Popen([shutil.which("sshd") or "/usr/sbin/sshd", "-D", "-e", "-f", str(sshd_config)],
                                stderr=sshd_log)
    config = root / "cluster.yaml"
    config.write_text(yaml.safe_dump(local_cluster(clone / "sweeps" / "cluster.yaml", gcs, dashboard, objects, {
        "ssh_user": "root", "ssh_private_key": str(key),
        "ssh_proxy_command": f"{sys.executable} {root / 'relay.py'} 127.0.0.1 {sshd_port}"})))
    launcher = user_environment(laptop, tempfile.gettempdir())  # the user's shell: no RAY_AUTH_* variable
    launcher.pop("RAY_TMPDIR")
    workers: list[Path] = []
    timings: dict[str, float] = {}
    try:
        start = time.perf_counter()
        up = _run([ray_cli, "up", "-y", "--no-config-cache", str(config)], launcher, clone, timeout=180)
        timings["ray_up_s"] = time.perf_counter() - start
        assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-4000:] + (root / "sshd.log").read_text()[-2000:]
        # the file mounts copied the code and the sweeps, not the experiment record, and the launcher's token
        assert sorted(p.name for p in (home / "headsweep").iterdir()) == [
            "README.md", "analysis", "model", "pyproject.toml", "sweeps", "trainable.py"]
        assert (home / ".ray" / "auth_token").read_text().strip() == token and token not in up.stdout + up.stderr
        for i in range(2):  # worker nodes: another folder, another HOME, nothing of the driver's environment
            folder = Path(tempfile.mkdtemp(prefix=f"rw{i}", dir="/tmp"))
            (folder / "home" / ".ray").mkdir(parents=True)
            shutil.copy(laptop / ".ray" / "auth_token", folder / "home" / ".ray")  # what the file mount copies
            clean = {"PATH": f"{venv_bin}:/usr/bin:/bin", "HOME": str(folder / "home"), "RAY_TMPDIR": str(folder),
                     "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",  # as worker_start_ray_commands
                     **s3_server.env}  # a node's own storage credentials (an instance profile's, on a cloud)
            (folder / "worker.py").write_text(WORKER)
            joined = _run([sys.executable, str(folder / "worker.py"), f"127.0.0.1:{gcs}"], clean, folder, timeout=300)
            assert joined.returncode == 0 and "joined" in joined.stdout, joined.stdout[-2000:] + joined.stderr[-2000:]
            workers.append(folder)

        results = s3_server.uri("e2e")
        start = time.perf_counter()  # the README's command, as written
        submitted = _run([ray_cli, "submit", str(config), "trainable.py", "sweeps/quickstart.yaml", "--smoke-test",
                          "--results", results], launcher, clone, timeout=900)
        timings["ray_submit_s"] = time.perf_counter() - start
        out = submitted.stdout + submitted.stderr
        assert submitted.returncode == 0, out[-5000:]
        join_line = re.search(rf"joined the Ray cluster at 127\.0\.0\.1:{gcs} \(started on this node\): (\d+) nodes, "
                              r"2 CPUs, 0 GPUs", out)
        assert join_line and join_line.group(1) == "3", out[-5000:]  # the head (0 CPUs) and both workers
        assert f"token authentication (token from {home / '.ray' / 'auth_token'})" in out, out[-5000:]
        took = int(re.search(r"sweep quickstart-smoke took (\d+) s", out).group(1))
        assert "Traceback" not in out, out[-5000:]
        df = pd.read_csv(download(results + "/quickstart-smoke/trials.csv", root / "submitted.csv"))
        prune = df[df["stage"] == "prune"]
        assert len(prune) == 2 and (prune["status"] == "completed").all(), prune[["trial_id", "status", "error"]]
        assert all(str(v).startswith(results + "/") for v in df["checkpoint"])
        per_node = prune["node"].value_counts()  # which node ran each trial: the workers, never the 0-CPU head
        assert per_node.sum() == 2 and all("@127.0.0.1" in n for n in per_node.index), per_node
        # the ideal: the base model, then the two trials side by side on the two workers
        ideal = float(df[df["stage"] == "pretrain"]["wall_seconds"].sum() + prune["wall_seconds"].max())
        assert s3_server.keys("e2e/quickstart-smoke/report").get("e2e/quickstart-smoke/report/report.html")

        start = time.perf_counter()
        job = _run([ray_cli, "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--working-dir", ".",
                    "--", "python", "trainable.py", "sweeps/quickstart.yaml", "--smoke-test", "--no-report", "--set",
                    "name=job", "--results", results], {**launcher, "RAY_AUTH_MODE": "token"}, clone, timeout=900)
        timings["ray_job_submit_s"] = time.perf_counter() - start
        job_out = job.stdout + job.stderr
        assert job.returncode == 0 and "succeeded" in job_out, job_out[-5000:]
        assert f"joined the Ray cluster at 127.0.0.1:{gcs}" in job_out and "3 nodes, 2 CPUs" in job_out
        assert "found, reusing" in job_out  # the base model the first submission trained, from the bucket
        job_df = pd.read_csv(download(results + "/job-smoke/trials.csv", root / "job.csv"))
        assert int((job_df[job_df["stage"] == "prune"]["status"] == "completed").sum()) == 2
        stored = s3_server.keys("e2e")
        assert token not in out + job_out
        holding = [k for k in stored if token.encode() in read_bytes(s3_server.uri(k))]
        assert not holding, holding  # no table, checkpoint, config, log or report in the bucket holds the token
    finally:
        for folder in workers:
            stop_ray_in(folder)  # the worker nodes it started: `ray stop` would stop every Ray on the machine
        down = _run([ray_cli, "down", "-y", str(config)], launcher, root, timeout=300)
        sshd.terminate()
        sshd.wait(timeout=30)
        for folder in [root, head_tmp, *workers]:
            shutil.rmtree(folder, ignore_errors=True)
    assert down.returncode == 0, down.stdout[-2000:] + down.stderr[-2000:]
    record("ray up (local provider over SSH) + 2 clean worker nodes, ray submit and ray job submit on s3://, ray down",
           nodes=int(join_line.group(1)), nodes_running_trials=len(per_node), most_trials_on_a_node=int(per_node.max()),
           sweep_s=took, trials_s_ideal=round(ideal, 1), trials_submit=len(prune),
           trials_job=int((job_df["stage"] == "prune").sum()),
           objects_in_storage=len(stored), mb_in_storage=round(sum(stored.values()) / 1e6, 1),
           **{k: round(v) for k, v in timings.items()})
