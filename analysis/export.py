"""Export the Pareto-optimal trials of a sweep as physically pruned models.

    python -m analysis.export RESULTS_DIR [--out DIR]

Each trial on the front (``trials.csv``, the sweep's objectives) has its last checkpoint pruned with
``model.prune``: the heads whose eval gate is 0 are removed, and the smaller plain model is written to
``DIR/<trial_id>.pt`` (default ``<sweep>/pruned``), ready for ``python -m model.translate`` or
``python -m model.evaluate``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from model.cli import add_out, command_parser
from model.prune import head_counts, prune_checkpoint
from sweeps.results import CHECKPOINT, TRIAL_ID, checkpoint_file
from sweeps.storage import StorageError, join_storage, upload

PRUNED_DIR = "pruned"  # <sweep>/pruned: the exported models

from .load import ResultsError, SweepResults, load_sweep
from .pareto import pareto_front


def export_front(s: SweepResults, out: Path) -> pd.DataFrame:
    """Prune every Pareto-optimal trial's last checkpoint into ``out``; one row per exported model."""
    rows = []
    for _, trial in pareto_front(s.completed, s.objectives, s.directions).iterrows():
        target = out / f"{trial['trial_id']}.pt"
        out.mkdir(parents=True, exist_ok=True)
        gated, pruned = prune_checkpoint(checkpoint_file(trial[CHECKPOINT]), target)
        rows.append({TRIAL_ID: trial[TRIAL_ID], **{o: trial[o] for o in s.objectives},
                     "heads": head_counts(pruned)["total"], "heads_before": head_counts(gated)["total"],
                     "parameters": sum(p.numel() for p in pruned.parameters()),
                     "parameters_before": sum(p.numel() for p in gated.parameters()), "model": str(target)})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None, prog: str = "python -m analysis.export") -> int:
    parser = command_parser(prog, __doc__.split("\n\n")[0], [
        f"{prog} results/quickstart",
        f"{prog} results/multi30k_en_de --out results/front-models",
    ])
    parser.add_argument("folder",
                        help="a sweep's results folder or URI, e.g. results/quickstart, s3://bucket/x/quickstart")
    add_out(parser, "one pruned model <trial>.pt per Pareto-optimal trial (default: <sweep>/pruned; for a sweep in "
                    "remote storage, uploaded there too)")
    args = parser.parse_args(argv)
    try:
        s = load_sweep(args.folder)
        out = Path(args.out) if args.out else s.path / PRUNED_DIR
        table = export_front(s, out)
        if s.remote and not args.out:
            upload(out, join_storage(s.source, PRUNED_DIR))
            print(f"uploaded to {join_storage(s.source, PRUNED_DIR)}")
    except (ResultsError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
