"""trials.csv rows from Tune results."""
from __future__ import annotations

from types import SimpleNamespace

import pandas as pd

from model import metrics as M
from sweeps.results import BEST_BLEU, BEST_BLEU_STEP, EVALUATIONS, trial_row


def test_a_trial_resumed_from_an_older_checkpoint_counts_each_evaluation_step_once():
    """Tune's history of a trial resumed from a checkpoint older than its last report repeats the steps after that
    checkpoint; the table counts each step once and takes the rerun's score for it."""
    history = pd.DataFrame({M.STEP: [100, 200, 200, 300], M.BLEU: [10.0, 30.0, 20.0, 25.0]})
    result = SimpleNamespace(metrics={"trial_id": "t1", M.STATUS: "completed", M.STEP: 300, M.BLEU: 25.0},
                             config={}, error=None, metrics_dataframe=history, checkpoint=None, path="/nowhere")
    row = trial_row(result, "prune", [])
    assert row[EVALUATIONS] == 3
    assert (row[BEST_BLEU], row[BEST_BLEU_STEP]) == (25.0, 300)  # not the replaced 30.0 at step 200
