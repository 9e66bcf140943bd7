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
# This notebook reads one or more sweep results folders (written by `python trainable.py SWEEP.yaml`), draws the
# Pareto front of open heads against BLEU, and compares sweeps by their fronts and hypervolumes.
# Open it with `jupytext --to ipynb analysis/pareto_notebook.py` (or Jupyter's jupytext extension); the tests run
# it from this file. Set `HEADSWEEP_RESULTS` (comma-separated folders) or edit the list below.

# %%
import os

import pandas as pd

from analysis import charts
from analysis.load import load_sweeps, trial_gates
from analysis.pareto import default_reference, hypervolume, pareto_front

folders = os.environ.get("HEADSWEEP_RESULTS", "results/quickstart").split(",")
sweeps = load_sweeps(folders)
for s in sweeps:
    print(f"{s.label}: {len(s.completed)} completed trials, objectives {list(zip(s.objectives, s.directions))}")

# %% [markdown]
# ## The Pareto-optimal trials of each sweep

# %%
for s in sweeps:
    front = pareto_front(s.completed, s.objectives, s.directions)
    display_cols = ["trial_id", *s.objectives, *s.params]
    print(s.label)
    print(front[display_cols].to_string(index=False))

# %% [markdown]
# ## Open heads against BLEU
# Every completed trial; the step line is the front. Hover a point for its hyperparameters.

# %%
fig, pfig = charts.pareto_chart(sweeps)
pfig.show()

# %% [markdown]
# ## Comparing sweeps: hypervolume against one reference point
# The reference is BLEU 0 and one head more than any trial kept; a larger hypervolume is a better front.

# %%
everything = pd.concat([s.trials for s in sweeps], ignore_index=True)
first = sweeps[0]
reference = default_reference(everything, first.objectives, first.directions)
pd.DataFrame([{"sweep": s.label, "hypervolume": hypervolume(s.completed, first.objectives, first.directions,
                                                              reference)} for s in sweeps])

# %% [markdown]
# ## The gates of the front's best-BLEU trial

# %%
best = pareto_front(first.completed, first.objectives, first.directions).iloc[0]
records = trial_gates(best)
fig, pfig = charts.gate_heatmap(records[-1], title=f"trial {best['trial_id']}")
pfig.show()
