"""The pruned model's speed against its base (model/latency.py) and bench/pruned_speed.py on real checkpoints; a sweep
with latency.enabled is tested in tests/test_constraints.py."""

from __future__ import annotations

import numpy as np
import torch

from model.config import GateConfig, ModelConfig
from model.data import EOS_ID, EncodedSplit
from model.latency import speedup_key, speedup_metrics, time_models
from model.prune import prune_model
from model.transformer import Transformer


def split(n: int = 12) -> EncodedSplit:
    rng = np.random.default_rng(0)
    src = [np.append(rng.integers(4, 60, int(k)), EOS_ID) for k in rng.integers(3, 12, n)]
    return EncodedSplit(src=src, tgt=[s[:3] for s in src], src_text=[""] * n, tgt_text=[""] * n)


def test_every_model_is_timed_at_every_batch_size_and_the_ratio_is_pruned_over_base():
    cfg = ModelConfig(d_model=32, n_heads=4, encoder_layers=2, decoder_layers=2, d_ff=64, dropout=0.0,
                      max_positions=64, share_embeddings=True)
    base = Transformer(cfg, 64, 64, GateConfig(mode="none")).eval()
    gated = Transformer(cfg, 64, 64, GateConfig(mode="learned", attention=["enc_self", "dec_self", "dec_cross"]))
    gated.load_state_dict(base.state_dict(), strict=False)
    with torch.no_grad():
        for _, _, gate in gated.gates():
            gate.log_alpha.fill_(-10.0)  # every head closed: every attention block skipped
    pruned = prune_model(gated.eval())
    rates = time_models({"base": base, "pruned": pruned}, split(), sentences=8, batch_sizes=[1, 4], beam=2, rounds=2)
    assert set(rates) == {"base", "pruned"} and all(set(r) == {1, 4} and min(r.values()) > 0 for r in rates.values())
    found = speedup_metrics(pruned, base, split(), sentences=8, batch_sizes=[1, 4], beam=2, rounds=1)
    assert set(found) == {"speedup", speedup_key(1), speedup_key(4)} and found["speedup"] == found[speedup_key(4)]


def test_the_pruned_speed_benchmark_times_real_checkpoints_and_scores_them(tmp_path):
    """bench/pruned_speed.py --base: each model timed against the base and scored on the test split; the last lines
    name the fastest model within the tolerance, its ratio and its BLEU against the base's."""
    import subprocess
    import sys

    from model.train import train
    from tests.helpers import QUIET, REPO, tiny_config

    base = train(tiny_config("train.max_steps=4", "train.eval_every=4"), tmp_path / "base", **QUIET).checkpoint
    gated = train(tiny_config("train.max_steps=4", "train.eval_every=4", "gates.mode=learned",
                              "gates.init_log_alpha=-10.0"), tmp_path / "gated", **QUIET).checkpoint  # all closed
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "pruned_speed.py"), "--base", str(base), "--models",
                           str(gated), "--sentences", "6", "--batch1-sentences", "2", "--rounds", "1", "--threads",
                           "1", "--tolerance", "100"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-3] == f"fastest within 100.0 BLEU of the base: {gated}"
    assert lines[-2].startswith("pruned_beam_speedup=") and float(lines[-2].split("=")[1]) > 0
    assert lines[-1].startswith("pruned_test_bleu_delta=")
    assert any(line.strip().startswith(f"{gated}: heads {{'enc_self': 0") for line in lines), proc.stdout


def test_the_structure_benchmark_times_each_shape_against_the_base(tmp_path):
    """bench/pruned_speed.py --structure: the Multi30k base shape's variants keep the heads, layers and widths they
    are named for; the command times each against the base and ends with one ratio per variant."""
    import importlib.util
    import subprocess
    import sys

    from model.config import load_config
    from model.prune import head_counts
    from model.transformer import Transformer
    from tests.helpers import REPO

    spec = importlib.util.spec_from_file_location("pruned_speed", REPO / "bench" / "pruned_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = load_config(REPO / "sweeps" / "runs" / "multi30k_base.yaml").model
    variants = bench.structure_variants(cfg)
    shapes = {}
    for name, v in variants.items():
        m = Transformer(v, 100, 100)
        shapes[name] = (head_counts(m)["total"], len(m.decoder), m.encoder[0].ffn.fc1.out_features)
    assert shapes == {"base": (72, 3, 1024), "heads_quarter": (18, 3, 1024), "heads_6_of_72": (6, 3, 1024),
                      "ffn_half": (72, 3, 512), "decoder_1_layer": (40, 1, 1024),
                      "heads_quarter_ffn_half": (18, 3, 512), "heads_quarter_decoder_1_layer": (10, 1, 1024),
                      "heads_quarter_decoder_1_ffn_half": (10, 1, 512), "vocab_half": (72, 3, 1024)}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "pruned_speed.py"), "--structure", "--config",
                           "sweeps/runs/quickstart.yaml", "--src-len", "4", "--out-len", "2", "--rounds", "1",
                           "--batch1-sentences", "2", "--threads", "1"], capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = dict(line.split("=") for line in proc.stdout.strip().splitlines()[-(len(variants) - 1):])
    assert sorted(last) == sorted(f"structure_speedup_{n}" for n in variants if n != "base")
    assert all(float(v) > 0 for v in last.values())


def test_the_cost_estimate_times_a_sweep_variant_given_with_set(tmp_path):
    """bench/sweep_cost.py --set: the sweep as the sweep command would run it with the override (here bf16 trials),
    each stage's step time measured and printed with the precision it ran in, ending with the two totals."""
    import subprocess
    import sys

    from tests.helpers import REPO, write_sweep

    sweep = write_sweep(tmp_path / "s.yaml")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "sweep_cost.py"), str(sweep), "--steps", "1",
                           "--warmup", "1", "--out", str(tmp_path / "out"), "--set",
                           "prune.set.train.precision=bf16"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    base = next(line for line in lines if line.startswith("base model:"))
    gates = next(line for line in lines if line.startswith("gates (Optuna):"))
    assert "bf16" not in base and gates.endswith(", bf16)")  # the override reaches the trials only
    assert lines[-2].startswith("sweep_core_hours=") and lines[-1].startswith("sweep_wall_hours=")
