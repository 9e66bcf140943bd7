"""Multi-objective early stopping of the gate trials: asynchronous successive halving whose rungs rank trials by
non-dominated sorting (MO-ASHA, Schmucker et al. 2021, "Multi-objective Asynchronous Successive Halving"), as a Ray
Tune ``TrialScheduler``.

Rungs lie at ``grace_steps`` x ``reduction_factor``^k optimizer steps, below the trials' last step. A trial that
reports at a rung is recorded there with its objectives; it goes on if it is among the best ceil(n / reduction_factor)
of the n trials recorded at that rung so far, ranked by Pareto front (non-dominated sorting) and, within a front, by
crowding distance (NSGA-II's, Deb et al. 2002: the front's edges first); otherwise it stops there. A stopped trial keeps
its last checkpoint and its real scores: the trials table marks it ``stopped`` and it counts in the Pareto front with
the scores it reached. Tune's own schedulers take one metric, and ASHA on BLEU alone would stop every trial that buys
fewer heads with a little BLEU, which is the front this tool exists to chart.

What a rung ranks: the objectives, except that the head count (``open_heads``) is ranked by ``l0``, the expected
number of open gated heads under the gates' distribution, unless ``search.scheduler.heads_at_rungs`` is
``open_heads``. The count of heads whose evaluation gate is open falls only once a gate has closed; early in a trial
every trial still has all its heads, the rung then ranks by BLEU alone, and the trials whose penalty would have
pruned most (lower BLEU so far) are the ones it stops. ``l0`` falls from the first step, by as much as the penalty
pushes (measured: bench/early_stop.sh, docs/benchmarks.md).

The rung records live in ``scheduler.json`` in the experiment folder, written at every decision, so that a sweep
continued with ``--resume`` (Tune restores the scheduler as it was created) decides as the first run would have.

How a trial stops: the scheduler answers Tune "continue" and leaves its word for the trial in Ray's key-value store
(:func:`tell_trial`); the trial, having reported at a rung, waits for it (:func:`await_decision`, in
``trainable.py``) and, told to stop, raises :class:`TrialStopped` and ends itself there, its W&B run finished.
Tune's STOP would end the trial's worker process instead, and the W&B run with it, unfinished.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from model import metrics as M

from .pareto import non_dominated_ranks
from .storage import exists, join_storage, read_bytes, write_text

SCHEDULER_FILE = "scheduler.json"  # in the experiment folder: every rung's records and the trials stopped
STOP, GO = b"stop", b"go"  # a rung's word to its trial, in Ray's key-value store (see decision_key)
DECISION_WAIT_S = 120.0  # how long a trial at a rung waits for the word before it goes on


class TrialStopped(Exception):
    """Raised in a trial told to stop at a rung: it ends itself there (its W&B run finished, its last report the
    rung's), rather than being ended by Tune with its worker process."""


def decision_key(trial_id: str, step: int) -> bytes:
    """Where the scheduler leaves its word for a trial at a rung (Ray's internal key-value store, which every node of
    the cluster reaches)."""
    return f"headsweep:mo_asha:{trial_id}:{step}".encode()


def tell_trial(trial_id: str, step: int, go_on: bool) -> None:
    """The scheduler's word to a trial waiting at a rung (see :func:`await_decision`)."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(decision_key(trial_id, step), GO if go_on else STOP, overwrite=True)


def await_decision(trial_id: str, step: int, timeout: float = DECISION_WAIT_S) -> bool:
    """In a trial that has just reported at a rung: True when the scheduler says stop. A trial that hears nothing
    within ``timeout`` goes on (the scheduler then counts it as going on too: it decides before it answers)."""
    import time

    from ray.experimental import internal_kv

    key, deadline = decision_key(trial_id, step), time.monotonic() + timeout
    while time.monotonic() < deadline:
        word = internal_kv._internal_kv_get(key)
        if word is not None:
            internal_kv._internal_kv_del(key)
            return word == STOP
        time.sleep(0.1)
    return False


def rungs(grace_steps: int, reduction_factor: float, max_steps: int) -> list[int]:
    """The rung steps below ``max_steps``: grace_steps, grace_steps x eta, ..."""
    out, step = [], float(grace_steps)
    while round(step) < max_steps:
        out.append(round(step))
        step *= reduction_factor
    return out


def crowding(values: Sequence[Sequence[float]]) -> list[float]:
    """NSGA-II's crowding distance of each point of one front (objectives already oriented for maximisation):
    the edges of every objective infinite, the others the summed normalised gap between their neighbours."""
    n = len(values)
    out = [0.0] * n
    if n <= 2:
        return [math.inf] * n
    for j in range(len(values[0])):
        order = sorted(range(n), key=lambda i: values[i][j])
        low, high = values[order[0]][j], values[order[-1]][j]
        out[order[0]] = out[order[-1]] = math.inf
        if high == low:
            continue
        for a, i, b in zip(order, order[1:], order[2:]):
            out[i] += (values[b][j] - values[a][j]) / (high - low)
    return out


def keeps(records: dict[str, Sequence[float]], trial: str, reduction_factor: float) -> bool:
    """Whether ``trial`` is among the best ceil(n / reduction_factor) of a rung's ``records`` (trial -> objectives
    oriented for maximisation): by Pareto front, then crowding distance, then the earlier record."""
    ids = list(records)
    values = [list(records[t]) for t in ids]
    ranks = non_dominated_ranks(values)
    distance = [0.0] * len(ids)
    for rank in set(ranks):
        members = [i for i, r in enumerate(ranks) if r == rank]
        for i, d in zip(members, crowding([values[i] for i in members]), strict=True):
            distance[i] = d
    order = sorted(range(len(ids)), key=lambda i: (ranks[i], -distance[i], i))
    best = {ids[i] for i in order[:math.ceil(len(ids) / reduction_factor)]}
    return trial in best


def _make_scheduler():
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    class MultiObjectiveASHA(FIFOScheduler):
        """MO-ASHA over the sweep's objectives (see the module's doc)."""

        def __init__(self, objectives: Sequence[tuple[str, str]], grace_steps: int, reduction_factor: float,
                     max_steps: int, experiment: str, tell=None, ranked_by: dict[str, str] | None = None) -> None:
            super().__init__()
            self.tell = tell  # (trial id, step, go on?) -> None; default: tell_trial, through Ray
            self.objectives = [tuple(o) for o in objectives]
            self.ranked_by = dict(ranked_by or {})  # objective -> the metric a rung ranks it by (e.g. l0)
            self.reduction_factor = reduction_factor
            self.rungs = rungs(grace_steps, reduction_factor, max_steps)
            self.experiment = experiment
            self._state: dict[str, Any] | None = None  # read from the experiment folder when first needed

        def __getstate__(self) -> dict[str, Any]:  # pickled (Tune keeps the tuner): the records stay in the folder
            return {**self.__dict__, "_state": None}

        def set_search_properties(self, metric, mode, **spec) -> bool:
            return True  # the objectives are its own: several metrics, which Tune's single metric cannot name

        @property
        def state(self) -> dict[str, Any]:
            if self._state is None:
                path = join_storage(self.experiment, SCHEDULER_FILE)
                self._state = json.loads(read_bytes(path)) if exists(path) else {"rungs": {}, "stopped": {}}
            return self._state

        def _oriented(self, result: dict[str, Any]) -> list[float] | None:
            ranked_by = getattr(self, "ranked_by", {})  # a scheduler pickled before it existed ranks the objectives
            values = [result.get(ranked_by.get(metric, metric)) for metric, _ in self.objectives]
            if any(not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
                return None
            return [float(v) if mode == "max" else -float(v) for v, (_, mode) in zip(values, self.objectives)]

        def on_trial_result(self, tune_controller, trial, result: dict[str, Any]) -> str:
            step = result.get(M.STEP)
            if step not in self.rungs or result.get(M.STATUS) != M.RUNNING:
                return TrialScheduler.CONTINUE
            values = self._oriented(result)
            if values is None:  # a diverged evaluation: the trial ends itself
                return TrialScheduler.CONTINUE
            trial_id = str(trial.trial_id)
            records = self.state["rungs"].setdefault(str(step), {})
            records[trial_id] = values
            go_on = keeps(records, trial_id, self.reduction_factor)
            if not go_on:
                self.state["stopped"][trial_id] = step
            write_text(join_storage(self.experiment, SCHEDULER_FILE), json.dumps(self.state, indent=1) + "\n")
            if not go_on:
                print(f"trial {trial_id}: stopped at step {step} (MO-ASHA: not among the best "
                      f"{math.ceil(len(records) / self.reduction_factor)} of {len(records)} at that rung)",
                      flush=True)
            # the trial waits at the rung for this word and, told to stop, ends itself there (await_decision);
            # Tune's STOP would end its worker process, and with it the W&B run it has not finished
            (self.tell or tell_trial)(trial_id, step, go_on)
            return TrialScheduler.CONTINUE

        def debug_string(self) -> str:
            return f"MO-ASHA: rungs at steps {self.rungs}, {len(self.state['stopped'])} trials stopped"

    return MultiObjectiveASHA


def make_scheduler(objectives: Sequence[tuple[str, str]], grace_steps: int, reduction_factor: float, max_steps: int,
                   experiment: str, tell=None, ranked_by: dict[str, str] | None = None):
    """The Tune scheduler (Ray imported only here); ``ranked_by``: objective -> the metric its rungs rank it by."""
    return _make_scheduler()(objectives, grace_steps, reduction_factor, max_steps, experiment, tell, ranked_by)


def stopped_trials(experiment: str) -> dict[str, int]:
    """Trial id -> the rung step where the scheduler stopped it, from the experiment's ``scheduler.json``."""
    path = join_storage(experiment, SCHEDULER_FILE)
    return {str(k): int(v) for k, v in json.loads(read_bytes(path)).get("stopped", {}).items()} if exists(path) else {}
