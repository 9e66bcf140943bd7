"""Sweep configs: the schema, its errors (each naming key, value and what is allowed), and the trial configs."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from model.config import ConfigError
from sweeps.schema import Dimension, auto_freeze, is_base_key
from sweeps.sweep import base_hash, trial_seed
from sweeps.validate import check_gpus, load_sweep, sweep_from_dict
from tests.helpers import REPO, TINY, TINY_SWEEP, tiny_sweep

SHIPPED = sorted((REPO / "sweeps").glob("*.yaml"))
SWEEPS = [p for p in SHIPPED if p.name != "cluster.yaml"]

def test_shipped_sweeps_load_and_search_lambda_lr_and_batch_size(monkeypatch):
    monkeypatch.setenv("HEADSWEEP_DATA", "/nonexistent")  # file paths are checked when read, not when loaded
    assert {p.stem for p in SWEEPS} >= {"quickstart", "multi30k_en_de", "wmt_en_ru"}
    for path in SWEEPS:
        sweep = load_sweep(path)
        keys = {d.key for d in sweep.space}
        assert "gates.penalty" in keys and "train.lr" in keys, path
        assert keys & {"data.max_tokens", "data.batch_size"}, path
        assert sweep.name == path.stem


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_key_of_shipped_sweeps_is_commented(path: Path):
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if re.match(r"^\s*[\w.\-]+:\s*\S", line) and not line.lstrip().startswith("#"):
            assert "#" in line, f"{path.name}:{number} has no comment: {line.strip()}"


def test_trial_config_applies_base_prune_params_and_its_own_seed():
    sweep = tiny_sweep()
    params = {"gates.penalty": 0.01, "train.lr": 2e-3, "data.max_tokens": 512}
    cfg = sweep.trial_config(params)
    assert (cfg.gates.mode, cfg.gates.penalty, cfg.train.lr, cfg.data.max_tokens) == ("learned", 0.01, 2e-3, 512)
    assert cfg.model.d_model == TINY["model"]["d_model"] and cfg.train.max_steps == 6
    assert cfg.train.seed == trial_seed(1, params) != trial_seed(1, {**params, "train.lr": 3e-3})
    assert cfg.train.threads == 1 and cfg.train.device == "cpu" and cfg.train.progress is False
    fixed = tiny_sweep({"search": {"trial_seeds": "fixed"}}).trial_config(params)
    assert fixed.train.seed == 1


def test_prune_freezes_the_side_without_gates_unless_told_otherwise():
    assert auto_freeze(["enc_self"]) == ["decoder"]
    assert auto_freeze(["dec_cross"]) == ["encoder"]
    assert auto_freeze(["enc_self", "dec_self"]) == []
    params = {"gates.penalty": 0.01, "train.lr": 2e-3, "data.max_tokens": 512}
    assert tiny_sweep().trial_config(params).train.freeze == ["decoder"]  # TINY gates enc_self only (the default)
    explicit = tiny_sweep({"prune": {"set": {"gates.mode": "learned"}, "freeze": []}})
    assert explicit.trial_config(params).train.freeze == []
    with pytest.raises(ConfigError, match=r"prune.set.train.freeze.*set prune.freeze instead"):
        tiny_sweep({"prune": {"set": {"gates.mode": "learned", "train.freeze": ["decoder"]}}})


def test_base_config_hash_ignores_where_a_run_goes_but_not_what_it_learns():
    sweep = tiny_sweep()
    a = sweep.base_config()
    assert a.gates.mode == "none"
    b = copy.deepcopy(a)
    b.train.threads, b.data.cache_dir, b.train.device = 7, "/elsewhere", "cuda"
    assert base_hash(a) == base_hash(b)
    b.train.max_steps += 1
    assert base_hash(a) != base_hash(b)


def test_searched_base_keys_give_one_base_model_per_choice():
    sweep = tiny_sweep({"space": {**TINY_SWEEP["space"], "model.encoder_layers": {"choice": [1, 2]}}})
    variants = sweep.base_variants()
    assert variants == [{"model.encoder_layers": 1}, {"model.encoder_layers": 2}]
    hashes = {base_hash(sweep.base_config(v)) for v in variants}
    assert len(hashes) == 2
    params = {"gates.penalty": 0.01, "train.lr": 1e-3, "data.max_tokens": 256, "model.encoder_layers": 1}
    assert sweep.trial_config(params).model == sweep.base_config(params).model
    assert is_base_key("data.vocab_size") and is_base_key("data.synthetic.seed") and not is_base_key("data.max_tokens")
    scratch = tiny_sweep({"pretrain": {"enabled": False},
                    "space": {**TINY_SWEEP["space"], "model.dropout": {"uniform": [0.0, 0.3]}}})
    assert scratch.base_variants() == [{}]


def test_points_to_evaluate_are_completed_from_the_prune_config():
    sweep = tiny_sweep({"search": {"points_to_evaluate": [{"gates.penalty": 0.002}]}})
    assert sweep.points_to_evaluate() == [{"gates.penalty": 0.002, "train.lr": TINY["train"]["lr"],
                                           "data.max_tokens": TINY["data"]["max_tokens"]}]


def test_smoke_test_shrinks_any_sweep_to_two_tiny_trials_of_two_evaluations():
    for path in SWEEPS:
        sweep = load_sweep(path, smoke_test=True, storage="/tmp/x")
        cfg = sweep.trial_config({d.key: d.extremes()[0] for d in sweep.space})
        assert sweep.search.num_samples == 2 and sweep.name.endswith("-smoke")
        assert cfg.train.max_steps == 2 * cfg.train.eval_every and cfg.train.eval_unit == "steps"
        assert cfg.model.d_model <= 32 and cfg.train.device == "cpu" and sweep.resources.gpus == 0
        assert sweep.schema.wandb.mode in ("offline", "disabled")


def test_dimension_membership_and_grid():
    assert Dimension("a", "loguniform", (0.1, 1.0)).contains(0.5)
    assert not Dimension("a", "loguniform", (0.1, 1.0)).contains(0.0)
    assert Dimension("a", "randint", (1, 3)).grid() == [1, 2, 3]
    assert not Dimension("a", "randint", (1, 3)).contains(2.5)
    with pytest.raises(ConfigError, match="grid"):
        Dimension("a", "uniform", (0.0, 1.0)).grid()


def test_gpu_check_refuses_gpu_trials_on_a_cluster_without_gpus():
    check_gpus(0, 0, False)
    check_gpus(0.5, 1, False)
    check_gpus(1, 0, True)  # the autoscaler adds GPU nodes
    with pytest.raises(ConfigError, match=r"`resources.gpus`: 1.*0 GPUs.*autoscale"):
        check_gpus(1, 0, False)


# Each malformed sweep is refused before Ray starts, naming the key and what is allowed.
BAD = [
    ({"surprise": 1}, r"Unknown key `surprise`"),
    ({"space": {}}, r"`space`.*at least one searched key"),
    ({"space": {"gates.penalty": {"loguniform": [-0.1, 0.5]}}}, r"`space.gates.penalty.loguniform`.*0 < low < high"),
    ({"space": {"gates.penalty": {"uniform": [-0.1, 0.5]}}}, r"space.gates.penalty = -0.1.*`gates.penalty`.*>= 0"),
    ({"space": {"train.lr": {"uniform": [0.0, 0.1]}}}, r"space.train.lr = 0.0.*`train.lr`.*> 0"),
    ({"space": {"data.max_tokens": {"choice": [0, 256]}}}, r"data.max_tokens = 0.*`data.max_tokens`"),
    ({"space": {"train.lrr": {"uniform": [0.1, 0.2]}}}, r"Unknown key `train.lrr`.*Did you mean `train.lr`"),
    ({"space": {"train.lr": {"normal": [0.1, 0.2]}}}, r"`space.train.lr`.*loguniform, uniform, choice, randint"),
    ({"space": {"train.lr": {"uniform": [0.2, 0.1]}}}, r"`space.train.lr.uniform`.*low < high"),
    ({"space": {"train.warmup_steps": {"randint": [1.5, 4]}}}, r"randint.*two integers"),
    ({"space": {"train.lr": {"choice": []}}}, r"`space.train.lr.choice`.*non-empty list"),
    ({"space": {"train.freeze": {"choice": [["decoder"], []]}}}, r"scalar values"),
    ({"space": {"gates.mode": {"choice": ["learned", "open"]}}}, r"`space.gates.mode`.*any key but"),
    ({"space": {"model.dropout": {"uniform": [0.0, 0.3]}}}, r"`space.model.dropout`.*choice.*one base model"),
    ({"objectives": [{"metric": "blue", "mode": "max"}]}, r"`objectives\[0\].metric`: 'blue'.*bleu, chrf"),
    ({"objectives": [{"metric": "bleu", "mode": "up"}]}, r"`objectives\[0\].mode`: 'up'.*'max', 'min'"),
    ({"objectives": [{"metric": "bleu", "mode": "max"}, {"metric": "bleu", "mode": "max"}]}, r"each metric once"),
    ({"objectives": []}, r"`objectives`.*at least one"),
    ({"search": {"sampler": "bayes"}}, r"`search.sampler`: 'bayes'.*'tpe', 'nsga2', 'random', 'grid'"),
    ({"search": {"num_samples": 0}}, r"`search.num_samples`: 0.*>= 1"),
    ({"search": {"max_concurrent": 0}}, r"`search.max_concurrent`: 0.*>= 1"),
    ({"search": {"sampler": "grid"}}, r"grid.*choice or randint"),
    ({"space": {"data.max_tokens": {"choice": [256, 512]}}, "search": {"sampler": "grid", "num_samples": 3}},
     r"`search.num_samples`: 3.*grid's 2 points"),
    ({"search": {"points_to_evaluate": [{"gates.penalty": 0.0}]}},
     r"`search.points_to_evaluate\[0\].gates.penalty`: 0.0.*loguniform value in \[0.001, 0.5\]"),
    ({"search": {"points_to_evaluate": [{"train.seed": 3}]}}, r"points_to_evaluate\[0\].*keys of the search space"),
    ({"resources": {"cpus": 0}}, r"`resources.cpus`: 0.*> 0"),
    ({"resources": {"gpus": -1}}, r"`resources.gpus`: -1.*>= 0"),
    ({"resources": {"gpus": 1.5}}, r"`resources.gpus`: 1.5.*fraction of one GPU, or 1"),
    ({"resources": {"gpus": 2}}, r"`resources.gpus`: 2.*data-parallel training across several GPUs is not"),
    ({"baselines": {"scratch_resources": {"cpus": 0}}}, r"`baselines.scratch_resources.cpus`: 0.*> 0"),
    ({"baselines": {"scratch_resources": {"gpus": 3}}}, r"`baselines.scratch_resources.gpus`: 3.*fraction"),
    ({"prune": {"set": {"gates.mode": "open"}}}, r"`prune.set.gates.mode`: 'open'.*'learned'"),
    ({"prune": {"set": {"gates.mode": "learned", "model.d_model": 32}}}, r"`prune.set`.*model.d_model"),
    ({"prune": {"set": {"gates.mode": "learned"}, "freeze": ["everything"]}}, r"`prune.freeze`.*'auto'"),
    ({"pretrain": {"set": {"gates.mode": "learned", "gates.penalty": 0.1}}}, r"`pretrain.set.gates.mode`: 'learned'"),
    ({"pretrain": {"checkpoint": "/no/such.pt"}}, r"`pretrain.checkpoint`.*existing checkpoint file"),
    ({"base": "no_such_file.yaml"}, r"`base`: 'no_such_file.yaml'.*does not exist"),
    ({"base": 3}, r"`base`: 3.*path to a run config or a mapping"),
    ({"name": "a/b"}, r"`name`: 'a/b'.*names a folder"),
    ({"keep_checkpoints": 0}, r"`keep_checkpoints`: 0"),
    ({"wandb": {"mode": "cloud"}}, r"`wandb.mode`: 'cloud'.*'auto', 'online', 'offline', 'disabled'"),
    ({"search": {"num_samples": "many"}}, r"`search.num_samples`: 'many'.*an integer"),
    ({"method": "magnitude"}, r"`method`: 'magnitude'.*gates, gates_budget, importance, iterative, random, scratch"),
    ({"method": ["gates", "gates"]}, r"`method`.*without repeats"),
    ({"method": []}, r"`method`: \[\]"),
    ({"method": ["scratch"]}, r"`method`.*with gates when it has scratch"),
    ({"method": ["gates", "random"], "pretrain": {"enabled": False}}, r"`method`.*pretrain.enabled is false"),
    ({"method": "random", "space": {**TINY_SWEEP["space"], "model.encoder_layers": {"choice": [1, 2]}}},
     r"`method`.*searches model or corpus keys"),
    ({"method": "importance", "baselines": {"budgets": [2, 9]}}, r"`baselines.budgets`.*\[0, 8\]"),
    ({"method": "random", "baselines": {"seeds": 0}}, r"`baselines.seeds`: 0"),
    ({"method": "random", "baselines": {"finetune_steps": [-1]}}, r"`baselines.finetune_steps`.*>= 0"),
    ({"method": "random", "baselines": {"importance_batches": 0}}, r"`baselines.importance_batches`: 0"),
    ({"method": "random", "baselines": {"set": {"model.d_model": 8}}}, r"`baselines.set`.*no model"),
    ({"method": ["gates", "scratch"], "baselines": {"scratch_set": {"gates.mode": "learned"}}},
     r"`baselines.scratch_set`.*no model"),
    ({"method": "random", "baselines": {"set": {"train.lr": -1.0}}}, r"method random: .*`train.lr`"),
    ({"method": "random", "baselines": {"scratch_layouts": "best"}}, r"`baselines.scratch_layouts`.*'pareto', 'all'"),
    ({"method": ["gates", "scratch"], "baselines": {"scratch_limit": 0}}, r"`baselines.scratch_limit`: 0"),
    ({"method": ["gates", "scratch"], "baselines": {"scratch_seeds": 0}}, r"`baselines.scratch_seeds`: 0"),
    ({"method": ["gates", "scratch"], "baselines": {"scratch_full": "yes"}}, r"`baselines.scratch_full`.*true/false"),
    ({"method": "iterative", "baselines": {"iterative_fraction": 0.0}}, r"`baselines.iterative_fraction`: 0.0.*\(0, 1\]"),
    ({"method": "gates_budget", "baselines": {"finetune_steps": [0]}},
     r"`baselines.finetune_steps`.*gates_budget fine-tunes"),
    ({"prune": {"set": {"gates.mode": "learned", "gates.lr": 0.1, "gates.lr_scale": 5.0}}},
     r"`gates.lr_scale`: 5.0.*set one"),
    ({"prune": {"set": {"gates.mode": "learned", "gates.min_open": 1.0}}}, r"`gates.min_open`: 1.0.*\[0, 1\)"),
    ({"test": {"beam_size": 0}}, r"`test.beam_size`: 0.*>= 1"),
    ({"test": {"bootstrap": 10}}, r"`test.bootstrap`: 10.*>= 100"),
    ({"test": {"split": "valid"}}, r"`test.split`: 'valid'.*'test'"),
    ({"test": {"target_removed": 1.0}}, r"`test.target_removed`: 1.0.*\(0, 1\)"),
    ({"test": {"tolerance": -0.5}}, r"`test.tolerance`: -0.5.*>= 0"),
    ({"test": {"include": "old"}}, r"`test.include`: 'old'.*a list"),
    ({"test": {"include": ["../old"]}}, r"`test.include\[0\]`: '../old'.*another sweep in the same results root"),
    ({"test": {"include": ["a", "a"]}}, r"`test.include`.*distinct sweep names"),
    ({"test": {"claims": [{"method": "gates", "against": "importance"}]}},
     r"`test.claims\[0\].method`: 'gates'.*a budget method: gates_budget, importance"),
    ({"test": {"claims": [{"method": "random", "against": "random"}]}}, r"`test.claims\[0\].against`.*another method"),
    ({"test": {"claims": [{"by": "median"}]}}, r"`test.claims\[0\].by`: 'median'.*'mean'.*'interval'"),
    ({"test": {"claims": [{"metod": "random"}]}}, r"metod"),
    ({"search": {"population_size": 1}}, r"`search.population_size`: 1.*NSGA-II"),
    ({"constraints": [{"metric": "blue", "min": 1}]}, r"`constraints\[0\].metric`: 'blue'.*bleu, chrf"),
    ({"constraints": [{"metric": "bleu"}]}, r"`constraints\[0\]`.*exactly one of min, max"),
    ({"constraints": [{"metric": "bleu", "min": 1, "max": 2}]}, r"`constraints\[0\]`.*exactly one of min, max"),
    ({"constraints": [{"metric": "open_heads", "max_relative_to_base": -4}]},
     r"`constraints\[0\].metric`: 'open_heads'.*bleu or chrf for a bound relative"),
    ({"constraints": [{"metric": "bleu", "min": 1}], "search": {"sampler": "random"}},
     r"`search.sampler`: 'random'.*'tpe' or 'nsga2' with constraints"),
    ({"objectives": [{"metric": "bleu", "mode": "max"}, {"metric": "speedup", "mode": "max"}]},
     r"`latency.enabled`: False.*true where an objective or a constraint is speedup"),
    ({"latency": {"enabled": True, "batch_sizes": []}}, r"`latency.batch_sizes`: \[\].*non-empty list"),
    ({"latency": {"enabled": True, "rounds": 0}}, r"`latency.rounds`: 0.*>= 1"),
    ({"latency": {"enabled": True}, "pretrain": {"enabled": False}},
     r"`latency.enabled`: True.*without a base model"),
    ({"search": {"scheduler": {"kind": "hyperband"}}}, r"`search.scheduler.kind`: 'hyperband'.*'none', 'mo_asha'"),
    ({"search": {"scheduler": {"kind": "mo_asha", "reduction_factor": 1}}},
     r"`search.scheduler.reduction_factor`: 1.*> 1"),
    ({"search": {"scheduler": {"kind": "mo_asha", "grace_steps": 6}}}, r"`search.scheduler.grace_steps`: 6.*\(0, 6\)"),
    ({"search": {"scheduler": {"kind": "mo_asha", "grace_steps": 2}}},
     r"`search.scheduler.grace_steps`: 2.*every 3 steps.*\[2\]"),
    ({"search": {"startup_trials": -1}}, r"`search.startup_trials`: -1.*TPE"),
]


@pytest.mark.parametrize("patch, message", BAD, ids=[m for _, m in BAD])
def test_malformed_sweeps_are_refused_with_key_and_allowed_values(patch, message, record):
    with pytest.raises(ConfigError, match=message) as refusal:
        tiny_sweep(patch)
    record("malformed sweep (load_sweep): unknown keys, wrong types, bad ranges, samplers, objectives, methods, ...",
           refused_naming_the_key=int("`" in str(refusal.value)))


def test_yaml_errors_name_the_file_and_line(tmp_path: Path):
    bad = tmp_path / "s.yaml"
    bad.write_text("name: s\nsearch:\n  seed: 1\n  seed: 2\n")
    with pytest.raises(ConfigError, match=r"s.yaml.*Duplicate key `seed` at line 4 \(first at line 3\)"):
        load_sweep(bad)
    bad.write_text("name: s\nspace: {gates.penalty: [\n")
    with pytest.raises(ConfigError, match=r"YAML syntax error in .*s.yaml at line 3"):
        load_sweep(bad)


def test_base_path_is_relative_to_the_sweep_file_and_overrides_apply(tmp_path: Path):
    import yaml

    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "base.yaml").write_text(yaml.safe_dump(TINY))
    raw = {**{k: v for k, v in TINY_SWEEP.items() if k != "base"}, "base": "runs/base.yaml"}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    sweep = load_sweep(tmp_path / "s.yaml", ["search.num_samples=5", "prune.set.train.max_steps=9"],
                       storage=str(tmp_path / "out"))
    assert sweep.search.num_samples == 5 and sweep.base["model"]["d_model"] == TINY["model"]["d_model"]
    assert sweep.trial_config({"gates.penalty": 0.01, "train.lr": 1e-3, "data.max_tokens": 256}).train.max_steps == 9
    assert sweep.experiment_dir == str(tmp_path / "out" / "t")


def test_methods_run_in_a_fixed_order_each_in_its_own_folder():
    sweep = tiny_sweep({"method": ["scratch", "random", "gates", "importance"], "baselines": {"finetune_steps": [0, 5]}})
    runs = sweep.method_runs()
    assert [(r.method, r.finetune_steps, r.name) for r in runs] == [
        ("gates", 0, "t"), ("importance", 0, "t-importance"), ("importance", 5, "t-importance-ft5"),
        ("random", 0, "t-random"), ("random", 5, "t-random-ft5"), ("scratch", 0, "t-scratch")]
    assert [r.label for r in runs][1:3] == ["importance", "importance + 5 steps"]
    assert sweep.gated_heads() == 8  # TINY: 2 encoder layers x 4 heads, enc_self gated
    assert sweep.budgets() == [1, 2, 3, 4, 6, 8]
    assert tiny_sweep({"method": "random", "baselines": {"budgets": [6, 2]}}).budgets() == [2, 6]


def test_baseline_configs_keep_the_prune_recipe_without_gates_and_scratch_keeps_the_base_recipe():
    sweep = tiny_sweep({"method": ["gates", "importance", "scratch"],
                  "pretrain": {"set": {"train.max_steps": 50, "train.lr": 5e-3}},
                  "prune": {"set": {"gates.mode": "learned", "train.max_steps": 6, "eval.max_sentences": 4}},
                  "baselines": {"finetune_steps": [0, 3], "set": {"train.lr": 1e-4},
                                "scratch_set": {"train.max_steps": 40}}})
    tuned = sweep.baseline_config(3, {"baseline.budget": 2})
    assert (tuned.gates.mode, tuned.gates.penalty, tuned.train.max_steps, tuned.train.lr) == ("none", 0.0, 3, 1e-4)
    assert tuned.train.freeze == ["decoder"] and tuned.eval.max_sentences == 4
    assert sweep.baseline_config(0, {}).train.max_steps == 0
    scratch = sweep.scratch_config({"enc_self": [1, 3]})
    assert scratch.model.heads == {"enc_self": [1, 3]} and scratch.gates.mode == "none"
    assert (scratch.train.max_steps, scratch.train.lr, scratch.eval.max_sentences) == (40, 5e-3, 4)
    assert scratch.train.freeze == []


def test_distillation_needs_the_sweeps_base_model_and_is_no_part_of_training_it():
    from model.config import ConfigError

    assert tiny_sweep({"prune": {"set": {"gates.mode": "learned", "distill.weight": 0.5}}}).pretraining
    with pytest.raises(ConfigError, match="`prune.set.distill.weight`.*base model, and this sweep has none"):
        tiny_sweep({"pretrain": {"enabled": False}, "prune": {"set": {"gates.mode": "learned", "distill.weight": 0.5}}})
    with pytest.raises(ConfigError, match="`pretrain.set.distill.weight`.*trains without a teacher"):
        tiny_sweep({"pretrain": {"set": {"distill.weight": 0.5}}})


def test_no_two_budget_methods_share_a_seed_stream_unless_fixed_seeds_are_asked_for():
    """per_trial seeds: a (budget, seed) point fine-tunes with a different seed in every method, so that two
    methods keeping the same heads are not the same model by construction; trial_seeds: fixed shares them."""
    from sweeps.results import BUDGET, LAYOUT_SEED

    raw = {"method": ["gates_budget", "importance", "iterative", "random"], "baselines": {"finetune_steps": [3]}}
    for mode, distinct in (("per_trial", 4), ("fixed", 1)):
        sweep = tiny_sweep({**raw, "search": {"trial_seeds": mode}})
        params = {BUDGET: 2, LAYOUT_SEED: 1}
        seeds = {sweep.baseline_config(3, params, m).train.seed for m in ("importance", "iterative", "random")}
        seeds.add(sweep.gates_budget_config(params).train.seed)
        assert len(seeds) == distinct, (mode, seeds)
        assert sweep.baseline_config(3, params, "random").train.seed == sweep.baseline_config(3, params, "random").train.seed


def test_scratch_models_train_on_their_own_resources_else_the_base_models():
    """Scratch trains several models as long as the base one: `baselines.scratch_resources` places them (threads and
    device), and without it they take `pretrain.resources`, as the base model does."""
    pretrain = {"set": {"train.max_steps": 50}, "resources": {"cpus": 2, "gpus": 0}}
    shared = tiny_sweep({"method": ["gates", "scratch"], "pretrain": pretrain})
    assert shared.scratch_resources == shared.pretrain_resources
    assert shared.scratch_config({"enc_self": [1, 3]}).train.threads == 2
    own = tiny_sweep({"method": ["gates", "scratch"], "pretrain": pretrain,
                "baselines": {"scratch_resources": {"cpus": 1, "gpus": 0}}})
    assert own.scratch_config({"enc_self": [1, 3]}).train.threads == 1
    assert own.base_config().train.threads == 2  # the base model keeps pretrain.resources
    from sweeps.plan import describe_plan

    assert "each on 1 CPUs, 0 GPUs" in describe_plan(own)
    smoke = tiny_sweep({"method": ["gates", "scratch"], "baselines": {"scratch_resources": {"cpus": 4, "gpus": 1}}},
                 smoke_test=True)
    assert smoke.scratch_resources.gpus == 0 and smoke.scratch_config({"enc_self": [1, 1]}).train.device == "cpu"


def test_smoke_test_shrinks_the_baselines_too():
    sweep = tiny_sweep({"method": ["gates", "random"], "baselines": {"budgets": [1, 2, 3], "seeds": 5,
                                                               "finetune_steps": [0, 500]}}, smoke_test=True)
    assert sweep.budgets() == [2] and sweep.schema.baselines.seeds == 1
    assert sweep.schema.baselines.finetune_steps == [10] and sweep.schema.baselines.scratch_limit == 1  # the longest
    # two tiny gate trials may close no head: the smoke test keeps the full layout, so scratch has a model to train
    smoke = tiny_sweep({"method": ["gates", "scratch"], "baselines": {"scratch_full": False}}, smoke_test=True)
    assert smoke.schema.baselines.scratch_full is True


def test_the_readmes_head_budget_sweep_loads(monkeypatch):
    """`--set prune.set.gates.target_open=12` over the Multi30k sweep: each trial ends with 12 encoder heads;
    the space's lambda is where the controller starts; over the 24 encoder heads it is refused."""
    monkeypatch.setenv("HEADSWEEP_DATA", "/nonexistent")
    sets = ["name=enc12", "method=gates", "prune.set.gates.target_open=12", "objectives=[{metric: bleu, mode: max}]"]
    sweep = load_sweep(REPO / "sweeps" / "multi30k_en_de.yaml", sets)
    cfg = sweep.trial_config({"gates.penalty": 0.02, "train.lr": 1e-4, "data.max_tokens": 1024})
    assert (cfg.gates.target_open, cfg.gates.penalty, sweep.methods) == (12, 0.02, ["gates"])
    with pytest.raises(ConfigError, match=r"`gates.target_open`: 30.*\[0, 24\]"):
        load_sweep(REPO / "sweeps" / "multi30k_en_de.yaml", ["prune.set.gates.target_open=30"])


def test_a_relative_base_checkpoint_is_found_from_the_working_folder_or_the_sweep_file(tmp_path, monkeypatch):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "base.pt").write_bytes(b"x")
    (tmp_path / "sweeps").mkdir()
    monkeypatch.chdir(tmp_path)
    sweep = tiny_sweep({"pretrain": {"checkpoint": "results/base.pt"}}, base_dir=tmp_path / "sweeps")
    assert sweep.schema.pretrain.checkpoint == str(tmp_path / "results" / "base.pt")
    (tmp_path / "sweeps" / "beside.pt").write_bytes(b"x")
    beside = tiny_sweep({"pretrain": {"checkpoint": "beside.pt"}}, base_dir=tmp_path / "sweeps")
    assert beside.schema.pretrain.checkpoint == str(tmp_path / "sweeps" / "beside.pt")
    with pytest.raises(ConfigError, match=r"`pretrain.checkpoint`.*tried .*missing.pt and .*missing.pt"):
        tiny_sweep({"pretrain": {"checkpoint": "missing.pt"}}, base_dir=tmp_path / "sweeps")


# The issue list of malformed sweeps, through the command itself: refused with exit status 2, naming the key and
# what is allowed, and Ray is never started (start_ray fails the test if it is called).
CLI_BAD = [
    ("unknown key", {"serach": {"num_samples": 2}}, r"Unknown key `serach`.*Did you mean `search`"),
    ("wrong type", {"search": {"num_samples": "ten"}}, r"`search.num_samples`: 'ten'.*integer"),
    ("negative lambda", {"space": {"gates.penalty": {"uniform": [-0.5, 0.5]}}}, r"`gates.penalty`.*>= 0"),
    ("empty search space", {"space": {}}, r"`space`.*at least one searched key"),
    ("lr <= 0", {"space": {"train.lr": {"choice": [0.0, 0.1]}}}, r"`train.lr`.*> 0"),
    ("unknown sampler", {"search": {"sampler": "hyperband"}}, r"`search.sampler`: 'hyperband'.*'tpe'"),
    ("objective no trial reports", {"objectives": [{"metric": "accuracy", "mode": "max"}]},
     r"`objectives\[0\].metric`: 'accuracy'.*bleu"),
    ("direction not min/max", {"objectives": [{"metric": "bleu", "mode": "maximize"}]},
     r"`objectives\[0\].mode`: 'maximize'.*'max', 'min'"),
    ("gpu with no GPUs", {"resources": {"cpus": 1, "gpus": 1}}, r"`resources.gpus`: 1.*0 GPUs"),
    ("missing corpus files", {"base": {**TINY, "data": {"corpus": "files", "max_len": 64, "files": {
        "train": "/no/such/train", "valid": "/no/such/valid"}}}},
     r"base config: data.files.train: no such file /no/such/train.en"),
    ("batch size 0", {"space": {"data.max_tokens": {"choice": [0, 512]}}}, r"`data.max_tokens`"),
    ("base batch size 0", {"base": {**TINY, "data": {**TINY["data"], "max_tokens": 0}}}, r"data.max_tokens"),
    ("negative max_failures", {"search": {"max_failures": -2}}, r"`search.max_failures`"),
    ("unknown method", {"method": "pruning"}, r"`method`: 'pruning'"),
]


@pytest.mark.parametrize("patch, message", [c[1:] for c in CLI_BAD], ids=[c[0] for c in CLI_BAD])
def test_the_command_refuses_malformed_sweeps_before_ray_starts(tmp_path, monkeypatch, capsys, patch, message, record):
    import yaml

    import trainable
    from sweeps import tuner

    ray_started = []

    def no_ray(*args, **kwargs):
        ray_started.append(args)
        raise AssertionError("Ray was started for a malformed sweep")

    monkeypatch.setattr(tuner, "start_ray", no_ray)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    raw = {**copy.deepcopy(TINY_SWEEP), **copy.deepcopy(patch), "wandb": {"mode": "disabled"}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert trainable.main([str(path), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    written = int((tmp_path / "r").exists())
    assert not written  # nothing written
    record("malformed sweep through `python trainable.py` (the issue's list, missing corpus files and no GPUs included)",
           refused_before_ray=int(not ray_started), results_folders_written=written)


@pytest.mark.parametrize("text, message", [
    ("name: s\nsearch:\n  seed: 1\n  seed: 2\n", r"Duplicate key `seed` at line 4 \(first at line 3\)"),
    ("name: s\nspace: {gates.penalty: [\n", r"YAML syntax error in .*bad.yaml at line 3"),
    ("name: s\n\x07\n", r"bad.yaml at line 2.*#x0007"),
], ids=["duplicate key", "YAML syntax error", "control character"])
def test_the_command_refuses_unreadable_sweep_files_with_their_line(tmp_path, monkeypatch, capsys, text, message, record):
    import trainable
    from sweeps import tuner

    monkeypatch.setattr(tuner, "start_ray", lambda *a, **k: pytest.fail("Ray was started"))
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert trainable.main([str(path), "--results", str(tmp_path / "r")]) == 2
    found = re.search(message, capsys.readouterr().err)
    assert found
    record("sweep file with a duplicate key, a YAML syntax error, a control character",
           refused_at_line=int(re.search(r"line (\d+)", found.group(0)).group(1)))


def test_data_dir_is_made_absolute_for_every_stage_and_leaves_the_base_hash_alone(tmp_path: Path):
    """--data-dir: one absolute folder in the base config, so every stage and trial reads the same corpora."""
    plain = sweep_from_dict(TINY_SWEEP)
    placed = sweep_from_dict(TINY_SWEEP, data_dir=str(tmp_path / "corpora"))
    for cfg in (placed.base_config(), placed.trial_config({"gates.penalty": 0.1})):
        assert cfg.data.data_dir == str(tmp_path / "corpora")
    assert base_hash(placed.base_config()) == base_hash(plain.base_config())


def test_resume_compares_what_trials_learn_not_where_they_read_it():
    from sweeps.resume import sweep_differences

    old = {"base": {"data": {"data_dir": "/a", "vocab_size": 100}}, "wandb": {"mode": "offline"},
           "pretrain": {"set": {"train.threads": 1}}}
    new = {"base": {"data": {"data_dir": "/b", "vocab_size": 100}}, "wandb": {"mode": "online"},
           "pretrain": {"set": {"train.threads": 4}}}
    assert sweep_differences(old, new) == []
    new["base"]["data"]["vocab_size"] = 200
    assert sweep_differences(old, new) == ["base.data.vocab_size: 100 -> 200"]


def test_paths_of_a_sweep_are_absolute_before_any_trial_sees_them(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CORP", "corpora")
    raw = copy.deepcopy(TINY_SWEEP)
    raw["pretrain"] = {"set": {"data.cache_dir": "cache"}}
    sweep = sweep_from_dict(raw, data_dir="data")
    base = sweep.base_config()
    assert base.data.data_dir == str(tmp_path / "data") and base.data.cache_dir == str(tmp_path / "cache")
    from sweeps.validate import absolute_paths

    fixed = absolute_paths({"data": {"files": {"train": "$CORP/train", "valid": "$UNSET_VAR/x", "test": "~/t"}}})
    assert fixed["data"]["files"] == {"train": str(tmp_path / "corpora" / "train"), "valid": "$UNSET_VAR/x",
                                      "test": str(Path.home() / "t")}


def test_a_sweep_recorded_with_unexpanded_corpus_paths_compares_equal_on_resume(tmp_path: Path, monkeypatch):
    from sweeps.resume import sweep_differences, with_absolute_paths

    monkeypatch.setenv("HEADSWEEP_DATA", str(tmp_path))
    before = {"base": {"data": {"files": {"train": "$HEADSWEEP_DATA/en-ru/train"}}}, "pretrain": {"set": {}}}
    now = {"base": {"data": {"files": {"train": str(tmp_path / "en-ru" / "train")}}}, "pretrain": {"set": {}}}
    assert sweep_differences(with_absolute_paths(before), now) == []
    assert sweep_differences(before, now)  # unexpanded, they differ


def test_the_shipped_multi30k_sweep_trains_every_method_equally_and_scores_the_test_set():
    """Issue of equal budgets: every fine-tuning method runs the same steps with the same schedule, the gate
    budgets are the baselines', each point has 3 seeds, scratch trains as long as the base model, test is on."""
    from sweeps.results import BUDGET, LAYOUT_SEED
    from sweeps.validate import load_sweep

    sweep = load_sweep(REPO / "sweeps" / "multi30k_en_de.yaml", storage="/tmp/unused")
    b = sweep.schema.baselines
    configs = [sweep.trial_config({}).train, sweep.gates_budget_config({BUDGET: 6, LAYOUT_SEED: 0}).train,
               *[sweep.baseline_config(n, {BUDGET: 6}).train for n in b.finetune_steps if n]]
    assert {(t.max_steps, t.schedule, t.warmup_steps) for t in configs} == {(600, "constant", 50)}
    assert sweep.budgets() == [3, 6, 12] and b.seeds >= 3 and b.scratch_seeds >= 2
    assert sweep.gates_budget_config({BUDGET: 6}).gates.target_open == 6
    assert sweep.scratch_config({"enc_self": [1, 1, 1]}).train.max_steps == sweep.base_config().train.max_steps
    assert sweep.schema.test.enabled and sweep.schema.test.beam_size == 5
    assert set(sweep.methods) == {"gates", "gates_budget", "importance", "iterative", "random", "scratch"}


def test_the_shipped_distilled_multi30k_sweep_trains_every_method_equally_from_the_same_base():
    """The rerun: every method distilled from the base model, 1,000 steps with the same schedule, the budgets with
    3 seeds; the gates at a budget prune 800 steps with the target moving over 720 (at most 0.03 heads a step for
    21 heads to close); the same base model as the undistilled sweep, whose rows it includes."""
    from sweeps.results import BUDGET, LAYOUT_SEED
    from sweeps.sweep import base_hash
    from sweeps.validate import load_sweep

    sweep = load_sweep(REPO / "sweeps" / "multi30k_en_de_distill.yaml", storage="/tmp/unused")
    undistilled = load_sweep(REPO / "sweeps" / "multi30k_en_de.yaml", storage="/tmp/unused")
    b = sweep.schema.baselines
    configs = [sweep.trial_config({}), sweep.gates_budget_config({BUDGET: 3, LAYOUT_SEED: 0}),
               *[sweep.baseline_config(n, {BUDGET: 3}, method) for n in b.finetune_steps
                 for method in ("importance", "iterative", "random")]]
    assert {(c.train.max_steps, c.train.schedule, c.train.warmup_steps) for c in configs} == {(1000, "constant", 50)}
    assert {(c.distill.weight, c.distill.temperature) for c in configs} == {(0.5, 2.0)}
    g = sweep.gates_budget_config({BUDGET: 3}).gates
    pruning = int(g.target_fix_at * 1000)
    assert pruning == 800 and (24 - 3) / round(g.target_warmup * pruning) <= 0.03
    assert sweep.budgets() == [3, 6, 12] and b.seeds == 3 and sweep.search.num_samples == 10
    assert base_hash(sweep.base_config()) == base_hash(undistilled.base_config())
    assert sweep.schema.test.include == [undistilled.name, "multi30k_en_de_nodistill"] and sweep.schema.test.enabled
    plain = load_sweep(REPO / "sweeps" / "multi30k_en_de_distill.yaml", storage="/tmp/unused", overrides=[
        "name=multi30k_en_de_nodistill", "prune.set.distill.weight=0", "method=[gates_budget, importance]"])
    assert not plain.gates_budget_config({BUDGET: 3}).distill.enabled  # the undistilled twin, otherwise the same
    assert plain.gates_budget_config({BUDGET: 3}).train == sweep.gates_budget_config({BUDGET: 3}).train


def test_a_trial_the_restored_searcher_does_not_know_is_recorded_not_a_crash(tmp_path: Path):
    """Tune can restore a trial that the searcher's restored state never suggested (the two states saved apart);
    its completion is recorded in the study from its config and result (OptunaSearch alone raises KeyError,
    which stopped every resume of such a sweep), and the known trials are told as before."""
    import optuna

    from sweeps.search import make_searcher, tune_space

    sweep = load_sweep(REPO / "sweeps" / "quickstart.yaml", storage=str(tmp_path))
    searcher = make_searcher(sweep)
    searcher.set_search_properties(None, None, tune_space(sweep))
    known = searcher.suggest("known")
    searcher.on_trial_complete("known", {"bleu": 20.0, "open_heads": 10, "config": known})
    config = {"gates.penalty": 0.05, "train.lr": 1.0e-3, "data.max_tokens": 2048}
    searcher.on_trial_complete("ghost", {"bleu": 25.0, "open_heads": 6, "wandb_run": "w/g",
                                         **{f"config/{k}": v for k, v in config.items()}})
    searcher.on_trial_complete("ghost-failed", None, error=True)
    searcher.on_trial_complete("ghost", {"bleu": 1.0, "open_heads": 1})  # told twice: the first one stands
    trials = {t.user_attrs["ray_trial_id"]: t for t in searcher._ot_study.trials}
    assert set(trials) == {"known", "ghost", "ghost-failed"}
    assert trials["known"].values == [20.0, 10] and trials["ghost"].values == [25.0, 6]
    assert trials["ghost"].params == config and trials["ghost"].user_attrs["wandb_run"] == "w/g"
    assert trials["ghost-failed"].state == optuna.trial.TrialState.FAIL


def test_an_unknown_trial_that_the_study_holds_as_running_is_told_on_that_record(tmp_path: Path):
    """Optuna's study is written live, so a trial the restored searcher lost is usually still there, RUNNING,
    with its Ray trial id: that record is the one told (no second record of the same trial)."""
    import optuna

    from sweeps.search import make_searcher, tune_space

    sweep = load_sweep(REPO / "sweeps" / "quickstart.yaml", storage=str(tmp_path))
    searcher = make_searcher(sweep)
    searcher.set_search_properties(None, None, tune_space(sweep))
    config = searcher.suggest("lost")  # in the study, RUNNING ...
    searcher._ot_trials.pop("lost")  # ... and not in the searcher's own records, as after a restore that lost it
    searcher.on_trial_complete("lost", {"bleu": 30.0, "open_heads": 4, "config": config})
    records = [t for t in searcher._ot_study.trials if t.user_attrs.get("ray_trial_id") == "lost"]
    assert len(records) == 1 and records[0].state == optuna.trial.TrialState.COMPLETE
    assert records[0].values == [30.0, 4] and records[0].params == config


def test_the_trials_table_lists_trials_in_the_order_tune_created_them(tmp_path: Path):
    """A resumed sweep's results come back in another order than the first run's; the table must not reorder its
    rows with them (a reordered table reads as a changed result in the record of a sweep kept under git)."""
    from types import SimpleNamespace

    import pandas as pd

    from sweeps.results import write_trials_table

    def result(trial_id: str, bleu: float) -> SimpleNamespace:
        history = pd.DataFrame({"bleu": [bleu - 1, bleu], "step": [100, 200]})
        return SimpleNamespace(metrics={"trial_id": trial_id, "bleu": bleu, "step": 200, "status": "completed"},
                               config={"gates.penalty": bleu / 100}, error=None, metrics_dataframe=history,
                               checkpoint=None, path=str(tmp_path / trial_id), filesystem=None)

    created = [result("ab_00000", 30.0), result("ab_00001", 31.0), result("ab_00002", 29.0)]
    first = write_trials_table(str(tmp_path), ["gates.penalty"], created, [])
    resumed = write_trials_table(str(tmp_path), ["gates.penalty"], [created[2], created[0], created[1]], [])
    assert list(first["trial_id"]) == list(resumed["trial_id"]) == ["ab_00000", "ab_00001", "ab_00002"]
    assert list(pd.read_csv(tmp_path / "trials.csv")["bleu"]) == [30.0, 31.0, 29.0]
