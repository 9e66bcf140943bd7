"""The baseline methods' trials without Ray: a base model pruned to a budget, evaluated or fine-tuned; layouts
read back from a trials table for the from-scratch method."""

from __future__ import annotations

import pytest
import torch

from model import metrics as M
from model.checkpoint import checkpoint_config, checkpoint_tokenizers, load_checkpoint
from model.prune import head_importance
from model.train import train
from model.translate import load_for_inference
from sweeps.baselines import (
    importance_batches,
    layout_heads,
    layout_name,
    parse_layout_name,
    pruned_start,
)
from tests.helpers import QUIET, tiny_config

PLAIN = ("gates.mode=none", "train.max_steps=12", "train.eval_every=12", "model.encoder_layers=3")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A small plain model (3 encoder layers x 4 heads) and the config its baseline trials use."""
    run = train(tiny_config(*PLAIN), tmp_path_factory.mktemp("base"), **QUIET)
    trial = tiny_config(*PLAIN, "train.max_steps=0", "train.freeze=[decoder]")
    return run.checkpoint, trial


def test_importance_keeps_the_budget_of_most_important_heads_and_the_run_reports_them(base, tmp_path):
    ckpt, cfg = base
    start = tmp_path / "start.pt"
    trial = pruned_start(ckpt, cfg, "importance", 5, 0, 4, start, **QUIET)
    assert sum(trial.model.heads["enc_self"]) == 5 and trial.gates.mode == "none"
    assert trial.model.heads["dec_self"] == [4, 4] and trial.model.heads["dec_cross"] == [4, 4]
    payload = load_checkpoint(ckpt)
    model, _ = load_for_inference(str(ckpt))
    scores = head_importance(model, importance_batches(cfg, checkpoint_tokenizers(payload), 4, **QUIET))
    ranked = sorted(((float(v), layer, h) for (kind, layer), values in scores.items() if kind == "enc_self"
                     for h, v in enumerate(values)), reverse=True)
    kept = load_checkpoint(start)["layout"]
    assert sorted((layer, h) for _, layer, h in ranked[:5]) == sorted(
        (int(key.split("/")[1]), h) for key, heads in kept.items() for h in heads)
    assert checkpoint_config(load_checkpoint(start)).model == trial.model

    run = train(trial, tmp_path / "run", init_from=start, **QUIET)  # 0 steps: the pruned model, evaluated
    assert run.step == 0 and len(run.history) == 1
    m = run.metrics
    assert m[M.open_heads_key("enc_self")] == 5
    assert [m[M.open_heads_layer_key("enc_self", i)] for i in range(3)] == trial.model.heads["enc_self"]


def test_random_layouts_follow_the_seed_and_fine_tuning_trains_the_pruned_model(base, tmp_path):
    ckpt, cfg = base
    layouts = [load_checkpoint(_start(ckpt, cfg, tmp_path / f"{seed}-{i}.pt", seed))["layout"]
               for seed, i in ((0, 0), (0, 1), (1, 0), (2, 0))]
    assert layouts[0] == layouts[1]
    assert any(layout != layouts[0] for layout in layouts[2:])
    tuned_cfg = tiny_config(*PLAIN, "train.max_steps=3", "train.eval_every=3", "train.freeze=[decoder]")
    trial = pruned_start(ckpt, tuned_cfg, "random", 2, 0, 1, tmp_path / "s.pt", **QUIET)
    before = load_checkpoint(tmp_path / "s.pt")["model"]
    run = train(trial, tmp_path / "run", init_from=tmp_path / "s.pt", **QUIET)
    after = load_checkpoint(run.checkpoint)["model"]
    assert run.step == 3 and run.metrics[M.open_heads_key("enc_self")] == 2
    encoder = [k for k in before if k.startswith("encoder.")]
    assert any(not torch.equal(before[k], after[k]) for k in encoder)
    decoder = [k for k in before if k.startswith("decoder.")]
    assert decoder and all(torch.equal(before[k], after[k]) for k in decoder)  # frozen, as the gate trials


def _start(ckpt, cfg, out, seed):
    pruned_start(ckpt, cfg, "random", 4, seed, 1, out, **QUIET)
    return out


def test_a_gated_checkpoint_is_refused_as_a_baseline_start(tmp_path):
    gated = train(tiny_config("gates.mode=learned", "gates.penalty=0.1", "train.max_steps=3", "train.eval_every=3"),
                  tmp_path / "gated", **QUIET)
    with pytest.raises(ValueError, match="learned gates"):
        pruned_start(gated.checkpoint, tiny_config("train.max_steps=0"), "random", 2, 0, 1, tmp_path / "s.pt", **QUIET)


def test_layouts_from_a_trials_table_row_round_trip_through_their_names():
    cfg = tiny_config("model.encoder_layers=3")
    row = {"trial_id": "a", "open_heads/enc_self/0": 4, "open_heads/enc_self/1": 0, "open_heads/enc_self/2": 2.0}
    heads = layout_heads(row, cfg, ["enc_self"])
    assert heads == {"enc_self": [4, 0, 2]}
    assert layout_name(heads) == "enc_self=4,0,2"
    assert parse_layout_name(layout_name(heads)) == heads
    with pytest.raises(ValueError, match=r"trial a: no open_heads/enc_self/2"):
        layout_heads({**row, "open_heads/enc_self/2": float("nan")}, cfg, ["enc_self"])


def test_scratch_trains_the_front_layouts_spread_over_head_counts_and_the_full_model():
    import pandas as pd

    from sweeps.tuner import scratch_layouts
    from tests.helpers import tiny_sweep

    rows = [{"trial_id": str(i), "stage": "prune", "status": "completed", "bleu": bleu, "open_heads": a + b,
             "open_heads/enc_self/0": a, "open_heads/enc_self/1": b}
            for i, (a, b, bleu) in enumerate([(1, 0, 10.0), (2, 1, 20.0), (3, 2, 30.0), (4, 3, 40.0), (4, 4, 41.0),
                                              (3, 3, 25.0)])]  # (3, 3) is dominated by (3, 2)
    rows.append({**rows[0], "trial_id": "x", "status": "diverged", "bleu": 99.0})
    table = pd.DataFrame(rows)
    sweep = tiny_sweep({"method": ["gates", "scratch"]})
    assert scratch_layouts(sweep, table) == ["enc_self=1,0", "enc_self=2,1", "enc_self=3,2", "enc_self=4,3",
                                             "enc_self=4,4"]
    every = tiny_sweep({"method": ["gates", "scratch"], "baselines": {"scratch_layouts": "all"}})
    assert "enc_self=3,3" in scratch_layouts(every, table)
    two = tiny_sweep({"method": ["gates", "scratch"], "baselines": {"scratch_limit": 2}})
    assert scratch_layouts(two, table) == ["enc_self=1,0", "enc_self=4,3", "enc_self=4,4"]
    # without the full model (the base model is that layout trained from scratch already)
    no_full = tiny_sweep({"method": ["gates", "scratch"], "baselines": {"scratch_limit": 2, "scratch_full": False}})
    assert scratch_layouts(no_full, table) == ["enc_self=1,0", "enc_self=4,3"]
    from sweeps.resume import SweepError

    with pytest.raises(SweepError, match=r"no layout but the full model's.*scratch_full is false"):
        scratch_layouts(no_full, table[table["trial_id"] == "4"])  # the front: the full model alone


def test_resuming_compares_only_the_settings_a_method_folders_trials_depend_on():
    from sweeps.resume import _settings_of, sweep_differences
    from sweeps.schema import MethodRun
    from sweeps.sweep import schema_dict
    from tests.helpers import tiny_sweep

    a = schema_dict(tiny_sweep({"method": ["gates", "random"], "baselines": {"seeds": 2}}))
    b = schema_dict(tiny_sweep({"method": ["gates", "random", "importance"],
                          "baselines": {"seeds": 2, "finetune_steps": [0, 5], "set": {"train.lr": 1e-4}}}))
    c = schema_dict(tiny_sweep({"method": ["gates", "random"], "baselines": {"seeds": 3}}))
    gates, random, tuned = MethodRun("gates", 0, "t"), MethodRun("random", 0, "t-random"), MethodRun("random", 5, "x")
    assert sweep_differences(_settings_of(gates, a), _settings_of(gates, c)) == []
    assert sweep_differences(_settings_of(random, a), _settings_of(random, b)) == []  # fine-tuning added later
    assert sweep_differences(_settings_of(random, a), _settings_of(random, c)) == ["baselines.seeds: 2 -> 3"]
    assert sweep_differences(_settings_of(tuned, a), _settings_of(tuned, b)) == [
        "baselines.set.train.lr: None -> 0.0001"]
    scored = schema_dict(tiny_sweep({"method": ["gates", "random"], "baselines": {"seeds": 2},
                               "test": {"enabled": True, "beam_size": 4}}))
    assert sweep_differences(_settings_of(gates, a), _settings_of(gates, scored)) == []  # scoring comes afterwards
    moved = schema_dict(tiny_sweep({"method": ["gates", "random"], "baselines": {"seeds": 2}, "resources": {"cpus": 4, "gpus": 0.5},
                              "pretrain": {"resources": {"cpus": 8, "gpus": 1}}}, storage="/elsewhere/results"))
    # a resume may move the sweep to other hardware or its folder to another place: not what its trials learn
    assert a["resources"] != moved["resources"] and a["storage"] != moved["storage"]
    assert sweep_differences(_settings_of(gates, a), _settings_of(gates, moved)) == []
    scratch = MethodRun("scratch", 0, "t-scratch")
    placed = schema_dict(tiny_sweep({"method": ["gates", "random"], "baselines": {"seeds": 2, "scratch_resources": {"cpus": 1}}}))
    assert sweep_differences(_settings_of(scratch, a), _settings_of(scratch, placed)) == []
    assert sweep_differences(a, placed) == []  # where scratch models run, not what they learn
    assert sweep_differences(_settings_of(random, a), _settings_of(random, moved)) == []
    importance = MethodRun("importance", 0, "t-importance")
    assert sweep_differences(_settings_of(importance, a), _settings_of(importance, c)) == ["baselines.seeds: 2 -> 3"]
    iterative = MethodRun("iterative", 0, "t-iterative")
    more = schema_dict(tiny_sweep({"method": ["gates", "iterative"], "baselines": {"seeds": 2, "iterative_fraction": 0.2}}))
    assert sweep_differences(_settings_of(iterative, a), _settings_of(iterative, more)) == [
        "baselines.iterative_fraction: 0.1 -> 0.2"]
    # scratch: a sweep recorded before baselines.scratch_full existed trained the full model: it resumes as true
    scratch = MethodRun("scratch", 0, "t-scratch")
    old = schema_dict(tiny_sweep({"method": ["gates", "scratch"]}))
    old["baselines"].pop("scratch_full")
    without = schema_dict(tiny_sweep({"method": ["gates", "scratch"], "baselines": {"scratch_full": False}}))
    assert sweep_differences(_settings_of(scratch, old), _settings_of(scratch, schema_dict(tiny_sweep(
        {"method": ["gates", "scratch"]})))) == []
    assert sweep_differences(_settings_of(scratch, old), _settings_of(scratch, without)) == [
        "baselines.scratch_full: True -> False"]
    # a sweep recorded before constraints, latency and search.scheduler existed ran as their defaults do
    from sweeps.resume import with_defaults

    before = schema_dict(tiny_sweep({"method": ["gates", "random"], "baselines": {"seeds": 2}}))
    for key in ("constraints", "latency"):
        before.pop(key)
    before["search"].pop("scheduler")
    assert sweep_differences(_settings_of(gates, with_defaults(before)), _settings_of(gates, a)) == []
    constrained = schema_dict(tiny_sweep({"method": ["gates", "random"], "baselines": {"seeds": 2},
                                          "constraints": [{"metric": "open_heads", "max": 4}]}))
    assert [d.split(":")[0] for d in sweep_differences(_settings_of(gates, with_defaults(before)),
                                                       _settings_of(gates, constrained))] == ["constraints"]
    timed = schema_dict(tiny_sweep({"method": ["gates", "random"], "baselines": {"seeds": 2},
                                    "latency": {"enabled": True}}))
    assert sweep_differences(_settings_of(gates, a), _settings_of(gates, timed)) == []  # timing, not learning
