"""Checkpoint averaging: the element-wise mean of the weights of several checkpoints of one run.

``python -m model.average CKPT [CKPT ...] --out AVERAGED.pt`` (or ``--last N RUN_DIR``). The result is an
inference checkpoint (weights, config, tokenizers; no optimizer state) that ``model.translate`` and
``model.evaluate`` read like any other.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from .checkpoint import CheckpointError, checkpoint_config, checkpoint_tokenizers, load_checkpoint, save_checkpoint
from .cli import add_out, command_parser, out_file

AVERAGED_FILE = "averaged.pt"  # what --out DIR receives


def average_checkpoints(paths: list[str | Path]) -> dict:
    """The payload of the last checkpoint with its model weights replaced by the mean over ``paths``.

    All checkpoints must share the model and gate settings (one run, or runs of one architecture).
    """
    if not paths:
        raise CheckpointError("no checkpoints to average")
    payloads = [load_checkpoint(p) for p in paths]
    configs = [checkpoint_config(p) for p in payloads]
    for path, cfg in zip(paths, configs):
        if (cfg.model, cfg.gates.mode, cfg.gates.attention) != (configs[0].model, configs[0].gates.mode,
                                                                configs[0].gates.attention):
            raise CheckpointError(f"{path} has another architecture than {paths[0]}; cannot average them")
    states = [p["model"] for p in payloads]
    averaged = {}
    for key, value in states[0].items():
        if value.is_floating_point():
            averaged[key] = torch.stack([s[key].float() for s in states]).mean(0).to(value.dtype)
        else:
            averaged[key] = value.clone()
    out = dict(payloads[-1])
    out["model"] = averaged
    out["averaged_from"] = [str(p) for p in paths]
    for key in ("optimizer", "scaler", "rng"):
        out.pop(key, None)  # an averaged model is for inference, not for resuming
    return out


def write_average(paths: list[str | Path], out: str | Path) -> Path:
    payload = average_checkpoints(paths)
    cfg, tok = checkpoint_config(payload), checkpoint_tokenizers(payload)
    state = {k: v for k, v in payload.items()
             if k not in ("config", "tokenizers", "versions", "git_commit", "format_version")}
    save_checkpoint(out, state, cfg, tok)
    return Path(out)


def last_checkpoints(run_dir: str | Path, n: int) -> list[Path]:
    found = sorted((Path(run_dir) / "checkpoints").glob("step_*.pt"))
    if not found:
        raise CheckpointError(f"no checkpoints in {Path(run_dir) / 'checkpoints'}")
    return found[-n:]


def main(argv: list[str] | None = None, prog: str = "python -m model.average") -> int:
    parser = command_parser(prog, __doc__.splitlines()[0], [
        f"{prog} --last 5 results/runs/multi30k_base --out results/runs/multi30k_base",
        f"{prog} run/checkpoints/step_00004000.pt run/checkpoints/step_00005000.pt --out run",
    ])
    parser.add_argument("checkpoints", nargs="*", help="checkpoint files")
    parser.add_argument("--last", nargs=2, metavar=("N", "RUN_DIR"), help="the newest N checkpoints of a run")
    add_out(parser, f"writes {AVERAGED_FILE} into it", required=True)
    args = parser.parse_args(argv)
    try:
        paths = list(args.checkpoints)
        if args.last:
            paths += last_checkpoints(args.last[1], int(args.last[0]))
        out = write_average(paths, out_file(args.out, AVERAGED_FILE))
    except (CheckpointError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"averaged {len(paths)} checkpoints -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
