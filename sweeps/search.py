"""The Optuna search of a sweep's gate trials: the YAML space as Tune domains, and Tune's OptunaSearch with the
sweep's objectives and sampler, tying each Optuna trial to its Ray trial and W&B run."""

from __future__ import annotations

import math
import warnings
from typing import Any

from .constraints import Bound, constraint_values
from .results import BASE, WANDB_RUN
from .study import StudyStorage, fresh_study_file
from .sweep import Sweep

# Optuna trial user attributes that tie a study's trial to its Ray trial and its W&B run
RAY_TRIAL_ATTR, WANDB_RUN_ATTR = "ray_trial_id", WANDB_RUN


def tune_space(sweep: Sweep) -> dict[str, Any]:
    """The YAML search space as Tune domains (the one place this translation happens)."""
    from ray import tune

    out: dict[str, Any] = {}
    for d in sweep.space:
        if d.kind == "loguniform":
            out[d.key] = tune.loguniform(*d.args)
        elif d.kind == "uniform":
            out[d.key] = tune.uniform(*d.args)
        elif d.kind == "randint":
            out[d.key] = tune.randint(d.args[0], d.args[1] + 1)  # Tune's upper bound is exclusive
        else:
            out[d.key] = tune.choice(list(d.args))
    return out


def make_searcher(sweep: Sweep, bounds: dict[str, list[Bound]] | None = None):
    """OptunaSearch with the objective lists (never metric/mode in TuneConfig: that makes it single-objective), and
    with ``bounds`` (per base model hash: the sweep's constraints) each finished trial's violations set as Optuna
    constraints (``Trial.set_constraint``), which TPE and NSGA-II honour."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    class HeadsweepSearch(OptunaSearch):
        """OptunaSearch that names the study's objectives, ties each Optuna trial to its Ray trial and W&B run
        (user attributes), and tells a trial whose final objectives are not finite (it diverged) to Optuna as
        FAIL, not left RUNNING (Optuna refuses NaN values for a COMPLETE trial)."""

        def _setup_study(self, mode):
            super()._setup_study(mode)
            with warnings.catch_warnings():  # experimental in Optuna since 3.2, and what the dashboard shows
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._ot_study.set_metric_names(list(self.metric))

        def suggest(self, trial_id: str) -> dict | None:
            params = super().suggest(trial_id)
            self._ot_trials[trial_id].set_user_attr(RAY_TRIAL_ATTR, trial_id)
            return params

        def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
            super().save_to_dir(checkpoint_dir, session_str)
            if isinstance(self._storage, StudyStorage):  # a remote sweep's study travels with the searcher's state
                self._storage.save_snapshot(checkpoint_dir)

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if trial_id not in self._ot_trials and trial_id not in self._completed_trials:
                self._tell_unknown(trial_id, result, error)
                return
            if result and result.get(WANDB_RUN) and trial_id in self._ot_trials:
                self._ot_trials[trial_id].set_user_attr(WANDB_RUN_ATTR, result[WANDB_RUN])
            if result and getattr(self, "bounds", None) and trial_id in self._ot_trials:  # before the tell
                found = self.bounds.get(str(result.get(BASE))) or next(iter(self.bounds.values()))
                for name, value in constraint_values(result, found).items():
                    self._ot_trials[trial_id].set_constraint(name, value)
            values = [(result or {}).get(m) for m in self.metric] if isinstance(self.metric, list) else []
            if result and any(not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
                result, error = None, True
            super().on_trial_complete(trial_id, result, error)

        def _tell_unknown(self, trial_id: str, result: dict | None, error: bool) -> None:
            """A trial that Tune restored but this searcher's restored state does not know: Tune copies its
            experiment state, the search wrappers' state and this searcher's pickle to the storage one file after
            another, and a driver killed in between leaves them apart. OptunaSearch would raise KeyError (and stop
            every resume of the sweep); the trial is told to the study instead: its own RUNNING record when the
            study has one (Optuna's storage is written live), else a new record from its config and result."""
            result = result or {}
            values = [result.get(m) for m in self.metric] if isinstance(self.metric, list) else []
            done = not error and values and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
            state = optuna.trial.TrialState.COMPLETE if done else optuna.trial.TrialState.FAIL
            attrs = {RAY_TRIAL_ATTR: trial_id, **({WANDB_RUN_ATTR: result[WANDB_RUN]} if result.get(WANDB_RUN) else {})}
            running = [t for t in self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                       if t.user_attrs.get(RAY_TRIAL_ATTR) == trial_id]
            if running:
                trial = optuna.trial.Trial(self._ot_study, running[0]._trial_id)
                for key, value in attrs.items():
                    trial.set_user_attr(key, value)
                self._ot_study.tell(trial, values if done else None, state=state)
            else:
                config = result.get("config") or {k.removeprefix("config/"): v for k, v in result.items()
                                                  if k.startswith("config/")}
                space = self._space if isinstance(self._space, dict) else {}
                params = {k: config[k] for k in space if k in config}
                self._ot_study.add_trial(optuna.trial.create_trial(
                    params=params, distributions={k: space[k] for k in params}, values=values if done else None,
                    state=state, user_attrs=attrs))
            self._completed_trials.add(trial_id)
            print(f"trial {trial_id}: unknown to the restored Optuna searcher; recorded in the study as "
                  f"{state.name} from its result", flush=True)

    s = sweep.search
    tpe = {} if s.startup_trials is None else {"n_startup_trials": s.startup_trials}
    nsga2 = {} if s.population_size is None else {"population_size": s.population_size}
    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=s.seed, **tpe),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=s.seed, **nsga2),
        "random": lambda: optuna.samplers.RandomSampler(seed=s.seed),
        "grid": lambda: optuna.samplers.GridSampler({d.key: d.grid() for d in sweep.space}, seed=s.seed),
    }
    fresh_study_file(sweep.experiment_dir)  # a new sweep (a restored one gets its searcher from Tune's state)
    storage = StudyStorage(sweep.experiment_dir)
    searcher = HeadsweepSearch(
        metric=[o.metric for o in sweep.objectives], mode=[o.mode for o in sweep.objectives],
        sampler=samplers[s.sampler](), study_name=sweep.name, storage=storage,
        points_to_evaluate=sweep.points_to_evaluate() or None,
    )
    searcher.bounds = bounds or {}
    return searcher
