"""headsweep's sweep layer: everything between a sweep YAML and one training run of ``model/``.

- ``schema``/``sweep``: the sweep YAML's schema, its validation, and each trial's run config (built once);
- ``tuner``: Ray Tune and Optuna objects, the two stages, resume checks (the only modules that import Ray and
  Optuna, with ``retention``);
- ``trial``: one trial as a plain function (reported checkpoint folders, exact restore);
- ``baselines``: the importance, random and scratch baselines' trials;
- ``results``: the results format (file names, the trials table), which ``analysis/`` reads;
- ``wandb_log``: W&B runs of trials and of a sweep's summary (the only module that imports wandb).

Importing this package imports none of Ray, Optuna or W&B; the modules that need them import them themselves.
"""
