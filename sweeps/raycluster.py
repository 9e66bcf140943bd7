"""Which Ray the driver uses, and how it gets in: a cluster named by --address or RAY_ADDRESS, one started on this
node (``ray start``, which ``ray up`` runs on the head), else a private local Ray on 127.0.0.1.

A cluster may demand Ray's token authentication (``RAY_AUTH_MODE=token`` on its nodes; ``ray start --head`` turns it
on by itself where a token already lies in ``~/.ray/auth_token``, and later Rays do so everywhere). Ray's own
``ray.init()`` presents the token only to a cluster it finds by itself, never to an address it is given, and a
refused driver retries for 20 s with a warning a second. So before joining, :func:`authenticate` asks the cluster's
GCS once without a token: a cluster that answers is joined as it is (and in its mode: a driver left in token
mode joins such a cluster, but its trials' actors die before they start); one that demands a token gets the one this
driver holds, where Ray's clients look for it (``RAY_AUTH_TOKEN``, else the file ``RAY_AUTH_TOKEN_PATH`` names, else
``~/.ray/auth_token``), and the driver presents it from then on; a cluster that refuses it, or a driver without one,
stops the sweep with one line that names the cluster and what to set. The token itself is never printed, logged or
sent to trials.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

AUTH_MODE = "RAY_AUTH_MODE"  # Ray's switch: "token" or "disabled"
TOKEN_VARIABLE, TOKEN_PATH_VARIABLE = "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
DEFAULT_TOKEN_FILE = Path("~") / ".ray" / "auth_token"
PROBE_TIMEOUT_S = 10.0
WHAT_TO_SET = (f"put the cluster's token (`ray get-auth-token` on its head prints it) in {DEFAULT_TOKEN_FILE}, or "
               f"set {TOKEN_VARIABLE} or {TOKEN_PATH_VARIABLE}")


class ClusterError(RuntimeError):
    """The driver cannot join the Ray cluster it was pointed at (credentials refused or missing)."""


def running_cluster() -> str | None:
    """The address of a Ray cluster started on this node (``ray start``, which ``ray up`` runs on the head, so
    ``ray submit`` and ``ray exec`` drivers find it), or None. Ray records it in ``<ray temp dir>/ray_current_cluster``
    ($RAY_TMPDIR, else the system's temporary folder); a stopped cluster leaves that file behind, so it counts
    only while the address accepts a connection."""
    record = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    try:
        found = record.read_text().strip()
        host, _, port = found.rpartition(":")
        with socket.create_connection((host, int(port)), timeout=2.0):
            return found
    except (OSError, ValueError):
        return None


def cluster_to_join(address: str | None, local: bool) -> tuple[str, str] | None:
    """(address, how it was found) of the cluster the driver uses: --address, else RAY_ADDRESS, else (unless
    ``local``) one started on this node; None: a private local Ray."""
    if address or os.environ.get("RAY_ADDRESS"):
        return address or os.environ["RAY_ADDRESS"], ""
    found = None if local else running_cluster()
    return (found, " (started on this node)") if found else None


def driver_token() -> tuple[str, str] | None:
    """(token, where it came from) as Ray's clients find it: ``RAY_AUTH_TOKEN`` if set and not empty, else the file
    ``RAY_AUTH_TOKEN_PATH`` names (which must then be readable and hold one), else ``~/.ray/auth_token``; None where
    this driver has none."""
    if value := os.environ.get(TOKEN_VARIABLE, "").strip():
        return value, f"${TOKEN_VARIABLE}"
    named = os.environ.get(TOKEN_PATH_VARIABLE)
    path = Path(named).expanduser() if named else DEFAULT_TOKEN_FILE.expanduser()
    where = f"{path} (${TOKEN_PATH_VARIABLE})" if named else str(path)
    try:
        value = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        if named:
            raise ClusterError(f"{TOKEN_PATH_VARIABLE}={named}: no such file; point it at the file that holds the "
                               f"cluster's token, or unset it") from None
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ClusterError(f"{where}: cannot read the Ray authentication token ({exc})") from None
    if not value:
        if named:
            raise ClusterError(f"{where} is empty: it should hold the cluster's token")
        return None
    return value, where


def _gcs_refuses(address: str, token: str | None) -> bool | None:
    """Whether the GCS at ``address`` (host:port) refuses a request carrying ``token`` (None: no token) as
    unauthenticated; None where it does not answer at all (down, TLS, not a GCS): Ray's own connect then says why."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    metadata = [("authorization", f"Bearer {token}")] if token else None
    with grpc.insecure_channel(address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=PROBE_TIMEOUT_S, metadata=metadata)
        except grpc.RpcError as exc:
            return True if exc.code() == grpc.StatusCode.UNAUTHENTICATED else None
    return False


def _use_auth_mode(mode: str) -> None:
    """From now on this process's Ray runs in authentication ``mode`` ("token": it presents its token, what
    ``ray.init()`` does for a cluster it finds itself; "disabled": it presents none and asks none of the workers)."""
    os.environ[AUTH_MODE] = mode
    from ray._raylet import Config

    Config.initialize("")  # Ray reads RAY_AUTH_MODE into its config once; read it again


def authenticate(address: str) -> str:
    """Make this driver present what the cluster at ``address`` asks for, before ``ray.init`` (see the module's
    docstring); returns how it authenticates, for the join line ('' where the cluster asks for nothing). Raises
    :class:`ClusterError` where the cluster wants a token this driver lacks or it refuses this driver's."""
    bare = address.split("://", 1)[-1]
    refuses = _gcs_refuses(bare, None) if ":" in bare else None  # "auto": Ray's own discovery presents the token
    if refuses is False and os.environ.get(AUTH_MODE, "").lower() == "token":
        # a driver in token mode on a cluster without authentication joins, but its trials' actors die unstarted
        _use_auth_mode("disabled")
        return f"no authentication: the cluster asks for none ({AUTH_MODE}=token set aside for this driver)"
    if not refuses:
        return ""
    if os.environ.get(AUTH_MODE, "").lower() == "disabled":
        raise ClusterError(f"the Ray cluster at {address} requires token authentication, and {AUTH_MODE}=disabled "
                           f"is set for this driver: unset it and {WHAT_TO_SET}")
    found = driver_token()
    if found is None:
        raise ClusterError(f"the Ray cluster at {address} requires token authentication and this driver has no "
                           f"token: {WHAT_TO_SET}")
    token, where = found
    if _gcs_refuses(bare, token):
        raise ClusterError(f"the Ray cluster at {address} refused this driver's authentication token (from {where}): "
                           f"it is not the cluster's; {WHAT_TO_SET}")
    if os.environ.get(AUTH_MODE, "").lower() != "token":
        _use_auth_mode("token")
    return f"token authentication (token from {where})"


# What trials on other nodes need from the driver's environment, sent in Ray's runtime_env (a job-level setting, so
# shown on the Ray dashboard and by `ray job`/`ray list` to whoever reaches the cluster): the project's folders and
# settings, W&B's mode and where it logs, the S3 endpoint and region. Never a secret: W&B and storage keys and Ray's
# token reach nodes through their own environment (cluster launcher setup, instance profile, ~/.netrc).
FORWARDED_PREFIXES = ("HEADSWEEP_",)
FORWARDED_NAMES = ("WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_BASE_URL", "WANDB_SILENT",
                   "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")
SECRET_WORDS = ("KEY", "SECRET", "TOKEN", "PASSWORD")


def forwarded_environment() -> dict[str, str]:
    """The driver's variables a trial on any node needs (see FORWARDED_NAMES), secrets never among them."""
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIXES) or k in FORWARDED_NAMES}
    return {k: v for k, v in env.items() if not any(word in k for word in SECRET_WORDS)}


def describe_cluster() -> str:
    """The nodes and resources of the Ray cluster this driver is connected to."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    return (f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}, {total.get('CPU', 0):g} CPUs, "
            f"{total.get('GPU', 0):g} GPUs")


def start_ray(cluster: tuple[str, str] | None, dashboard: bool, dashboard_host: str = "127.0.0.1") -> None:
    """Join ``cluster`` (from :func:`cluster_to_join`) or, when None, start a private local Ray on loopback; its
    dashboard (with --dashboard) listens on ``dashboard_host``, 127.0.0.1 unless the user names another address.
    Says which it did, with the cluster's nodes and resources."""
    import ray

    if cluster is not None:
        address, found = cluster
        how = authenticate(address)
        env_vars = forwarded_environment()
        ray.init(address=address, include_dashboard=None, runtime_env={"env_vars": env_vars} if env_vars else None)
        print(f"joined the Ray cluster at {address}{found}: {describe_cluster()}" + (f"; {how}" if how else "")
              + (f"; passed to its workers: {', '.join(sorted(env_vars))}" if env_vars else ""), flush=True)
        return
    try:  # on 127.0.0.1 (run_sweep set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before Ray was imported)
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=dashboard, dashboard_host=dashboard_host)
    except Exception as exc:
        if not dashboard:
            raise
        raise ClusterError(f"--dashboard needs Ray's full install: pip install -e '.[cluster]' ({exc})") from exc
    print(f"started a private local Ray: {describe_cluster()}", flush=True)
