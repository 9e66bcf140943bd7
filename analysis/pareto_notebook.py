# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # How many heads does the model need?
#
# This notebook reads one or more sweep results folders (written by `headsweep sweep SWEEP.yaml`), draws the
# Pareto front of open heads against BLEU, and compares sweeps by their fronts and hypervolumes.
# Open it with `jupytext --to ipynb analysis/pareto_notebook.py` (or Jupyter's jupytext extension), from the
# repository root or from `analysis/`; its packages come with `pip install -e '.[notebook]'`. Set
# `HEADSWEEP_RESULTS` (comma-separated folders or s3:// URIs; relative folders are read from the repository root)
# or edit the list below.

# %%
# %matplotlib inline
import os
import sys
from pathlib import Path

import pandas as pd
from IPython.display import display


def repository_root(start: Path) -> Path:
    """The folder holding headsweep's pyproject.toml, from wherever Jupyter was started inside the repository."""
    for folder in [start, *start.parents]:
        if (folder / "pyproject.toml").is_file() and (folder / "analysis").is_dir():
            return folder
    return start


ROOT = repository_root(Path.cwd().resolve())
if str(ROOT) not in sys.path:  # without an installed project, the packages are found beside the notebook
    sys.path.insert(0, str(ROOT))

from analysis import charts  # noqa: E402
from analysis.load import load_sweeps, trial_gates  # noqa: E402
from analysis.pareto import default_reference, hypervolume, pareto_front  # noqa: E402
from sweeps.results import TRIAL_ID  # noqa: E402

folders = [f if "://" in f or Path(f).is_absolute() else ROOT / f  # a URI (s3://...) is read from the storage
           for f in os.environ.get("HEADSWEEP_RESULTS", "results/quickstart").split(",")]
runs = load_sweeps(folders)
pd.DataFrame([{"sweep": s.label, "completed trials": len(s.completed), "folder": s.source,
               "objectives": ", ".join(f"{o} {d}" for o, d in zip(s.objectives, s.directions))} for s in runs])

# %% [markdown]
# ## The Pareto-optimal trials of each sweep

# %%
for s in runs:
    front = pareto_front(s.completed, s.objectives, s.directions)
    print(s.label)
    display(front[[TRIAL_ID, *s.objectives, *s.params]])

# %% [markdown]
# ## Open heads against BLEU
# Every completed trial; the step line is the front. Hover a point for its hyperparameters.

# %%
fig, pfig = charts.pareto_chart(runs)
pfig

# %% [markdown]
# ## Comparing sweeps: hypervolume against one reference point
# The reference is BLEU 0 and one head more than any trial kept; a larger hypervolume is a better front.

# %%
everything = pd.concat([s.trials for s in runs], ignore_index=True)
first = runs[0]
reference = default_reference(everything, first.objectives, first.directions)
pd.DataFrame([{"sweep": s.label, "hypervolume": hypervolume(s.completed, first.objectives, first.directions,
                                                              reference)} for s in runs])

# %% [markdown]
# ## The gates of the front's best-BLEU trial

# %%
best = pareto_front(first.completed, first.objectives, first.directions).iloc[0]
records = trial_gates(best)
fig, pfig = charts.gate_heatmap(records[-1], title=f"trial {best['trial_id']}")
fig
