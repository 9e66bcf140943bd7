"""Start-up time of a training run (a sweep trial) on Multi30k: cold caches against warm ones.

Each measurement is a fresh Python process that imports the project, loads the corpus, gets its tokenizers and
token ids, and builds the model (everything a trial does before its first step), timed from process start:

- cold: empty cache (sentencepiece is trained and the corpus tokenised);
- tokenizer cached: the sentencepiece model is reused, the corpus is tokenised again;
- warm: tokenizer and training token ids come from the cache (memory-mapped).

Prints ``startup_speedup_warm_vs_cold=X`` and ``startup_speedup_warm_vs_tokenizer_only=Y`` as the last lines.

    HEADSWEEP_DATA=../shared/data python bench/startup.py [--config sweeps/runs/multi30k_base.yaml] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = """
import time, sys
start = time.perf_counter()
from model.config import load_config
from model.data import load_data
from model.transformer import Transformer
cfg = load_config(sys.argv[1])
data = load_data(cfg.data, cfg.eval.split, log=lambda m: None, max_positions=cfg.model.max_positions)
model = Transformer(cfg.model, len(data.tokenizers.src), len(data.tokenizers.tgt), cfg.gates)
print(time.perf_counter() - start)
"""


def run_child(config: str, cache: Path) -> float:
    env = dict(os.environ, HEADSWEEP_CACHE=str(cache))
    out = subprocess.run([sys.executable, "-c", CHILD, config], env=env, cwd=REPO, capture_output=True, text=True,
                         check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(REPO / "sweeps" / "runs" / "multi30k_base.yaml"))
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="headsweep-startup-"))
    cold, tok_only, warm = [], [], []
    try:
        for r in range(args.repeats):
            cache = root / f"cache{r}"
            cold.append(run_child(args.config, cache))
            warm.append(run_child(args.config, cache))
            shutil.rmtree(cache / "ids")
            tok_only.append(run_child(args.config, cache))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = statistics.median
    print(f"config: {args.config}; {args.repeats} repeats, fresh process each (imports included)")
    for name, xs in (("cold (train sentencepiece, tokenise)", cold), ("tokenizer cached, tokenise", tok_only),
                     ("warm (tokenizer + token ids cached)", warm)):
        print(f"  {name:38s} {med(xs):6.2f} s  ({', '.join(f'{x:.2f}' for x in xs)})")
    print(f"startup_speedup_warm_vs_cold={med(cold) / med(warm):.2f}")
    print(f"startup_speedup_warm_vs_tokenizer_only={med(tok_only) / med(warm):.2f}")


if __name__ == "__main__":
    main()
