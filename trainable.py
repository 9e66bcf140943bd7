"""Ray Tune entry point of a sweep (filled by the sweep work): ``python trainable.py SWEEP.yaml``.

The training loop it will wrap is ``model.train.train(cfg, out_dir, report=..., resume=..., init_from=...)``:
a validated config in, ``report(metrics, checkpoint_path)`` at every evaluation, exact resume from a
checkpoint. Only this file imports Ray.
"""

import sys

if __name__ == "__main__":
    sys.exit("The sweep driver is not built yet; train a single model with `python -m model.train CONFIG.yaml`.")
