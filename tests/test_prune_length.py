"""analysis.prune_length: when a head-budget run's kept heads stop changing."""

from analysis.prune_length import read_run, report, settled_step
from model import metrics as M
from model.train import train
from tests.helpers import QUIET, tiny_config


def test_the_settled_step_is_where_the_kept_heads_last_changed():
    a, b = {1, 2}, {1, 3}
    assert settled_step([]) is None
    assert settled_step([(10, a)]) == 10
    assert settled_step([(10, a), (20, b), (30, b), (40, b)]) == 20
    assert settled_step([(10, a), (20, a), (30, b)]) == 30
    assert settled_step([(10, a), (20, b), (30, a), (40, a)]) == 30  # a change back counts


def test_a_budget_run_never_fixed_reports_its_kept_heads_at_every_evaluation(tmp_path):
    cfg = tiny_config("gates.mode=learned", "gates.target_open=3", "gates.target_fix_at=1.0", "gates.lr=0.2",
                      "train.max_steps=12", "train.eval_every=2")
    result = train(cfg, tmp_path, **QUIET)
    rows = read_run(tmp_path)
    assert [r[M.STEP] for r in rows] == [2, 4, 6, 8, 10, 12]
    assert all(len(r["kept"]) == 3 for r in rows) and rows[0]["changed"] is None
    assert [r["changed"] for r in rows[1:]] == [len(b["kept"] - a["kept"]) for a, b in zip(rows, rows[1:])]
    assert rows[-1][M.BLEU] == result.metrics[M.BLEU]
    text = report(tmp_path)
    settled = settled_step([(r[M.STEP], r["kept"]) for r in rows])
    assert f"stopped changing at step {settled} (of 12)" in text and text.count("\n| ") == 2 + len(rows) - 1
