"""headsweep's model package: ONE training run in plain PyTorch (a gated encoder–decoder Transformer, its data,
training loop, checkpoints, decoding, evaluation and pruning). It imports neither Ray, Optuna nor W&B, and nothing
of the layers above it (``tests/test_layers.py`` checks both), so a run can be debugged with plain ``python``."""
