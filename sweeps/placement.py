"""Can the sweep's trials be placed on the Ray cluster it runs on? Checked on the driver before any trial starts,
because Ray leaves a trial that no node can hold PENDING forever. No Ray here (the driver passes what Ray says).

A trial needs all of its CPUs and GPUs on one node. It can start when a node of the cluster offers them, or when
the cluster's autoscaler can add a node type that does. The autoscaler's node types are read where Ray's cluster
launcher puts them on the head node, ``~/ray_bootstrap_config.yaml`` (``ray up`` writes it; Ray Tune looks there
too), so that a driver started by ``ray submit`` or ``ray job submit`` sees them. An autoscaler that keeps its
config elsewhere (KubeRay, say) is declared with ``resources.autoscale: true``.

Trials on several machines must all reach the results storage: a folder on the driver's disk is refused unless
``storage_shared: true`` says that every node mounts it at the same path (NFS, ...).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from model.config import ConfigError

BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
SAME_MACHINE_PROVIDERS = ("fake_multinode",)  # Ray's fake autoscaler: every node a process on this machine


@dataclass(frozen=True)
class NodeType:
    """A node type the cluster's autoscaler may start."""

    name: str
    resources: dict[str, float]  # {} when the cloud provider fills it in from the instance type
    max_workers: int


@dataclass(frozen=True)
class Autoscaler:
    """What a cluster launcher config says about the nodes it may add."""

    path: str
    provider: str
    node_types: tuple[NodeType, ...]
    hosts: tuple[str, ...]  # the machines it may use, where the config lists them (provider `local`)

    @property
    def adds_machines(self) -> bool:
        """Whether nodes it adds may be other machines than this one."""
        if self.provider in SAME_MACHINE_PROVIDERS:
            return False
        if self.provider == "local":
            return any(h not in ("127.0.0.1", "localhost") for h in self.hosts)
        return any(t.max_workers > 0 for t in self.node_types)


def read_autoscaler(path: str | os.PathLike = BOOTSTRAP_CONFIG) -> Autoscaler | None:
    """The autoscaler config of the cluster this node heads, or None where there is none (or it cannot be read)."""
    path = Path(os.path.expanduser(str(path)))
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(config, dict):
        return None
    head = config.get("head_node_type")
    default_max = int(config.get("max_workers") or 0)
    types = []
    for name, spec in (config.get("available_node_types") or {}).items():
        if name == head or not isinstance(spec, dict):
            continue
        resources = {k: float(v) for k, v in (spec.get("resources") or {}).items()}
        types.append(NodeType(name, resources, int(spec.get("max_workers", default_max) or 0)))
    provider = config.get("provider") or {}
    hosts = [provider.get("head_ip") or ""] + list(provider.get("worker_ips") or [])
    return Autoscaler(str(path), str(provider.get("type", "")), tuple(types), tuple(h for h in hosts if h))


def _offers(resources: dict[str, float], cpus: float, gpus: float) -> bool:
    return resources.get("CPU", 0.0) >= cpus and resources.get("GPU", 0.0) >= gpus


def _ask(cpus: float, gpus: float) -> str:
    return f"{cpus:g} CPU{'s' if cpus != 1 else ''}" + (f" and {gpus:g} GPU{'s' if gpus != 1 else ''}" if gpus else "")


def check_placement(where: str, cpus: float, gpus: float, nodes: list[dict[str, float]],
                    autoscaler: Autoscaler | None, declared: bool) -> str:
    """'' when a node of the cluster (``nodes``: each alive node's resources) can hold one trial now; a note when
    trials wait for the autoscaler; a :class:`ConfigError` naming ``where`` when no node ever can."""
    if any(_offers(n, cpus, gpus) for n in nodes):
        return ""
    have = "; ".join(_ask(n.get("CPU", 0.0), n.get("GPU", 0.0)) for n in nodes) or "no node"
    if autoscaler is not None:
        fits = [t for t in autoscaler.node_types if t.max_workers > 0 and (not t.resources or _offers(
            t.resources, cpus, gpus))]
        if fits:
            names = ", ".join(f"{t.name} ({_ask(t.resources.get('CPU', 0), t.resources.get('GPU', 0))})"
                              if t.resources else f"{t.name} (resources from its instance type)" for t in fits)
            return (f"{where}: no node offers {_ask(cpus, gpus)} yet (nodes: {have}); trials wait for the "
                    f"autoscaler to add {names}")
    if declared:
        return (f"{where}: no node offers {_ask(cpus, gpus)} yet (nodes: {have}); trials wait for the autoscaler "
                f"(resources.autoscale: true)")
    types = (f"; the autoscaler's node types ({autoscaler.path}): " + ", ".join(
        f"{t.name} {t.resources or '{}'} up to {t.max_workers}" for t in autoscaler.node_types)
             if autoscaler is not None and autoscaler.node_types else "; no autoscaler config at "
             + BOOTSTRAP_CONFIG)
    raise ConfigError(
        f"Invalid setting for `{where}`: {_ask(cpus, gpus)} per trial. No node of this Ray cluster offers that "
        f"(nodes: {have}){types}, so its trials would wait forever. Ask for what one node has, add nodes that "
        f"have it, or set resources.autoscale: true if an autoscaler this driver cannot see adds them.")


def check_shared_storage(storage: str, nodes: list[dict[str, Any]], autoscaler: Autoscaler | None,
                         shared: bool) -> None:
    """Refuse a folder on the driver's disk as the storage of trials that may run on other machines."""
    if "://" in storage or shared:
        return
    hosts = sorted({str(n.get("host")) for n in nodes})
    if len(hosts) > 1 or (autoscaler is not None and autoscaler.adds_machines):
        where = f"nodes on {len(hosts)} machines ({', '.join(hosts)})" if len(hosts) > 1 else (
            f"nodes its autoscaler adds ({autoscaler.path})")
        raise ConfigError(
            f"Invalid setting for `storage`: {storage!r} is a folder on this machine, but trials run on {where}, "
            f"which cannot reach it. Use shared storage: --results s3://bucket/prefix (or gs://...), or a folder "
            f"every node mounts at the same path, declared with storage_shared: true (NFS, ...).")
