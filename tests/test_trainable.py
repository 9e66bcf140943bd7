"""The sweep driver end to end with Ray: smoke sweeps of every shipped sweep, resume after an interrupted driver,
a two-node cluster, divergence, GPU refusal, W&B offline files, and the cluster launcher config."""

from __future__ import annotations

import copy
import glob
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from model import metrics as M
from tests.helpers import (
    NEEDS_DATA,
    REPO,
    TINY,
    check_table,
    loopback_cluster,
    run_cli,
    start_cli,
    trial_workers,
    wandb_history,
    write_sweep,
)

SWEEPS = sorted(p for p in (REPO / "sweeps").glob("*.yaml") if p.name != "cluster.yaml")


@pytest.mark.slow
@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_smoke_test_of_every_shipped_sweep(path: Path, tmp_path: Path, request: pytest.FixtureRequest):
    if path.stem in NEEDS_DATA and not NEEDS_DATA[path.stem].is_dir():
        pytest.skip(f"{path.stem} needs the corpus in {NEEDS_DATA[path.stem]} (absent here)")
    if path.stem == "quickstart":  # the run the analysis tests read
        proc, tmp_path = request.getfixturevalue("quickstart_smoke")
    else:
        proc = run_cli(str(path), "--smoke-test", "--results", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Pareto-optimal trials" in proc.stdout
    # a clean first run: W&B (offline) closed in every worker, no traceback anywhere in a successful sweep
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output[max(0, output.find("Traceback") - 2000):][:6000]
    experiment = tmp_path / f"{path.stem}-smoke"
    sweep = yaml.safe_load(path.read_text())
    if "gates" not in (sweep.get("method") or ["gates"]):  # budget methods only: no Optuna study, no gate folder
        assert not (experiment / "trials.csv").exists()  # the sweep's own folder holds W&B's offline runs only
        folders = sorted(tmp_path.glob(f"{path.stem}-smoke-*"))
        assert {f.name.split("-smoke-")[1].split("-")[0] for f in folders} == set(sweep["method"])
        for folder in folders:
            table = pd.read_csv(folder / "trials.csv")
            trials = table[table["stage"] == "prune"]
            assert len(trials) and (trials["status"] == "completed").all()
            assert json.loads((folder / "finished.json").read_text())["trials"] == len(trials)
            if (sweep.get("latency") or {}).get("enabled"):  # each pruned model timed against the base
                assert (trials["speedup"] > 0).all()
        return
    df = check_table(experiment, trials=2)
    # the driver marks a method folder finished once every trial it expects has (what sweeps.record asks for)
    assert json.loads((experiment / "finished.json").read_text()) == {"trials": 2, "expected": 2}
    bases = df[df["stage"] == "pretrain"]
    expected_bases = len(sweep["space"].get("model.encoder_layers", {}).get("choice", [None]))
    assert len(bases) == expected_bases and (bases["status"] == "completed").all()
    assert set(df[df["stage"] == "prune"]["base"]) == set(bases["base"])  # each trial starts from its base
    study = optuna.load_study(study_name=f"{path.stem}-smoke", storage=f"sqlite:///{experiment / 'optuna.db'}")
    assert len(study.directions) == 2  # multi-objective
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    # traceability: the study names its objectives; each Optuna trial names its Ray trial and W&B run
    objectives = [o.get("metric", "bleu") for o in sweep.get("objectives", [{"metric": "bleu"}, {"metric": "open_heads"}])]
    assert study.metric_names == objectives
    prune_rows = df[df["stage"] == "prune"].set_index("trial_id")
    assert sorted(t.user_attrs["ray_trial_id"] for t in study.trials) == sorted(prune_rows.index)
    for t in study.trials:
        row = prune_rows.loc[t.user_attrs["ray_trial_id"]]
        assert t.user_attrs["wandb_run"] == row["wandb_run"] and Path(row["wandb_run"]).is_dir()
        assert list(t.values) == pytest.approx([row[o] for o in objectives], rel=1e-12)  # through the CSV
    # the scores' sacrebleu signatures travel with them, into the table and the report
    assert df["bleu_signature"].str.startswith("nrefs:1|").all() and df["chrf_signature"].str.contains("nc:6").all()
    assert df["bleu_signature"].iloc[0] in (experiment / "report" / "report.md").read_text()
    # the other methods of the sweep, each in its folder, on the same base model
    methods = [m for m in (sweep.get("method") or ["gates"]) if m != "gates"]
    baseline_trials = 0
    for folder in sorted(tmp_path.glob(f"{path.stem}-smoke-*")):
        table = pd.read_csv(folder / "trials.csv")
        trials = table[table["stage"] == "prune"]
        assert len(trials) and (trials["status"] == "completed").all() and set(trials["base"]) == set(bases["base"])
        assert json.loads((folder / "finished.json").read_text())["trials"] == len(trials)
        baseline_trials += len(trials)
    assert {f.name.split("-smoke-")[1].split("-")[0] for f in tmp_path.glob(f"{path.stem}-smoke-*")} == set(methods)
    # W&B: one offline run per trial and base, with the metrics of every evaluation
    runs = sorted(Path(p) for p in glob.glob(str(experiment / "wandb" / "wandb" / "offline-run-*"))
                  if not p.endswith("-summary"))
    assert len(runs) == 2 + expected_bases + baseline_trials
    gate_trials = set(df[df["stage"] == "prune"]["trial_id"])
    with_gates = 0
    for run in runs:
        rows = wandb_history(run)  # the offline run file W&B wrote, its step axis the optimizer step
        evaluations = [r for r in rows if M.BLEU in r]
        assert evaluations and all(M.OPEN_HEADS in r for r in evaluations)
        # the training log every train.log_every (2 in a smoke test) steps, between the evaluations (none in a
        # baseline evaluated without fine-tuning)
        logged = [r for r in rows if "train/loss" in r]
        assert all({"train/lr", "train/tokens_per_s", "train/nll"} <= set(r) for r in logged), logged
        assert logged or max(r["step"] for r in evaluations) == 0, (run, rows)
        if any(run.name.endswith(t) for t in gate_trials):
            assert [r["step"] for r in evaluations] == [5, 10] and [r["step"] for r in logged] == [2, 4, 6, 8, 10]
            assert all("train/lr_gates" in r for r in logged)  # the gates' own learning rate
            with_gates += bool(list((run / "files" / "media" / "images").glob("gates_*.png")))
    assert with_gates == 2  # a gate heatmap in each gate trial (base models and baselines have no gates)


@pytest.mark.slow
def test_a_killed_trial_worker_is_retried_from_its_last_checkpoint(tmp_path: Path, record):
    """The trial's worker is held writing its step-200 checkpoint and killed there. It got that far only once Tune
    had registered the step-100 checkpoint (a function trainable's report returns after the driver has processed
    the save), so the retry resumes from step 100; a kill earlier, between the report and Tune's save, would send
    the trial back to step 0, which is Ray's behaviour and not what this test is about."""
    sweep = write_sweep(tmp_path / "s.yaml", search={"num_samples": 1, "max_concurrent": 1, "max_failures": 2},
                        prune={"set": {"gates.mode": "learned", "train.max_steps": 300, "train.eval_every": 100}})
    log = tmp_path / "fault.log"
    env = {"HEADSWEEP_TEST_RUN": str(tmp_path), "HEADSWEEP_FAULT_AT": "partial:step_00000200.pt",
           "HEADSWEEP_FAULT_LOG": str(log)}
    proc = start_cli(str(sweep), "--no-report", "--results", str(tmp_path), env=env)
    deadline = time.time() + 300
    while not (log.exists() and log.read_text().strip()):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "timed out waiting for the trial worker held in its step-200 checkpoint"
        time.sleep(0.1)
    pid = int(log.read_text().split()[0])
    assert pid in trial_workers(str(tmp_path)), (pid, log.read_text())  # the held process is the trial's worker
    os.kill(pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    held = log.read_text().splitlines()
    assert len(held) == 1, held  # the retried worker wrote its step-200 checkpoint without being held again
    (trial,) = (tmp_path / "t").glob("prune_trainable_*")
    progress = pd.read_csv(trial / "progress.csv")
    df = check_table(tmp_path / "t", trials=1, evaluations=len(progress))
    assert df[df["stage"] == "prune"][M.STEP].tolist() == [300]
    steps = list(progress[M.STEP])
    # retried from the checkpoint of its last reported evaluation: every evaluation is reported once
    assert steps == [100, 200, 300], steps
    # exact resume: the same sweep unbroken (same trial parameters and seed, same base model) ends with the same
    # numbers, bit for bit, although the killed trial trained again the steps it had gone past its last checkpoint
    unbroken = run_cli(str(sweep), "--no-report", "--results", str(tmp_path), "--set", "name=u")
    assert unbroken.returncode == 0, unbroken.stdout[-3000:] + unbroken.stderr[-3000:]
    a, b = (pd.read_csv(tmp_path / name / "trials.csv").query("stage == 'prune'").iloc[0] for name in ("t", "u"))
    for key in (M.STEP, M.LOSS, M.BLEU, M.CHRF, M.VALID_NLL, M.OPEN_HEADS, M.L0):
        assert a[key] == b[key], (key, a[key], b[key])
    # the killed worker's scratch folder (its checkpoints) was taken back by the retry, which removed its own
    trial_id = df[df["stage"] == "prune"]["trial_id"].iloc[0]
    assert not list(Path(os.environ["HEADSWEEP_SCRATCH"]).glob(f"headsweep-{trial_id}-*"))
    completed = int((df[df["stage"] == "prune"]["status"] == "completed").sum())
    record("kill -9 of the trial's Ray worker process held writing its step-200 checkpoint",
           workers_killed=len(held), trials_lost=1 - completed,
           evaluations_redone=len(steps) - len(set(steps)), final_step=int(df[df["stage"] == "prune"][M.STEP].iloc[0]))


@pytest.mark.slow
def test_resume_without_a_sweep_is_an_error(tmp_path: Path):
    proc = run_cli(str(write_sweep(tmp_path / "s.yaml")), "--resume", "--results", str(tmp_path))
    assert proc.returncode == 2 and "--resume: there is no sweep in" in proc.stderr


@pytest.mark.slow
def test_diverged_trial_ends_as_such_and_the_sweep_goes_on(tmp_path: Path, record):
    sweep = write_sweep(
        tmp_path / "s.yaml", space={"train.lr": {"choice": [1.0e-3, 1.0e+30]}},
        prune={"set": {"gates.mode": "learned", "train.max_steps": 6, "train.eval_every": 3, "train.grad_clip": None,
                       "gates.penalty": 0.05}},
        pretrain={"enabled": False}, search={"sampler": "grid", "num_samples": 2, "max_concurrent": 2})
    # the local default, in an environment that says nothing of where Ray listens (as a user's shell)
    proc = run_cli(str(sweep), "--no-report", "--results", str(tmp_path), env={"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": None})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    df = pd.read_csv(tmp_path / "t" / "trials.csv")
    # a private local Ray stays on loopback: its node (where each trial ran) has the address 127.0.0.1
    assert "started a private local Ray" in proc.stdout
    assert all(str(node).endswith("@127.0.0.1") for node in df["node"]), df["node"].tolist()
    assert (df["stage"] == "prune").all()  # from scratch: no base model
    by_lr = {row["param.train.lr"]: row for _, row in df.iterrows()}
    assert by_lr[1e30]["status"] == "diverged" and by_lr[1e-3]["status"] == "completed"
    assert re.match(r"non-finite (loss|gradient) at step ", by_lr[1e30]["error"])  # the table says why
    assert math.isnan(by_lr[1e30][M.BLEU])
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 't' / 'optuna.db'}")
    states = sorted(t.state.name for t in study.trials)
    assert states == ["COMPLETE", "FAIL"]  # a diverged trial never enters the front
    record("NaN/inf loss (lr 1e30) in one of two trials", trials=len(df), diverged=int((df["status"] == "diverged").sum()),
           trials_completed=int((df["status"] == "completed").sum()))


@pytest.mark.slow
def test_a_reused_worker_runs_each_trial_as_a_fresh_process_would(tmp_path: Path, record):
    """search.reuse_actors: one Ray worker process runs the trials one after another. Nothing of one
    trial may reach the next (random state, data, the model, the working folder, the W&B run): every trial ends
    with the numbers, bit for bit, that it has in a new process per trial."""
    sweep = write_sweep(tmp_path / "s.yaml", space={"train.lr": {"choice": [1.0e-3, 3.0e-3, 1.0e-2]}},
                        pretrain={"enabled": False}, wandb={"mode": "offline"},
                        search={"sampler": "grid", "num_samples": 3, "max_concurrent": 1, "reuse_actors": True})
    reused = run_cli(str(sweep), "--no-report", "--results", str(tmp_path))
    fresh = run_cli(str(sweep), "--no-report", "--results", str(tmp_path), "--set", "name=u",
                    "--set", "search.reuse_actors=false")
    for proc in (reused, fresh):
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    def pids(name: str) -> list[int]:  # the worker process of each trial, from Tune's own results
        return [json.loads((trial / "result.json").read_text().splitlines()[-1])["pid"]
                for trial in sorted((tmp_path / name).glob("prune_trainable_*"))]

    assert len(pids("t")) == 3 and len(set(pids("t"))) == 1, pids("t")
    assert len(set(pids("u"))) == 3, pids("u")
    a, b = (check_table(tmp_path / name, trials=3).set_index("param.train.lr") for name in ("t", "u"))
    for lr in a.index:
        for key in (M.STEP, M.LOSS, M.BLEU, M.CHRF, M.VALID_NLL, M.OPEN_HEADS, M.L0, "seed"):
            assert a.loc[lr, key] == b.loc[lr, key], (lr, key, a.loc[lr, key], b.loc[lr, key])
        assert Path(a.loc[lr, "checkpoint"]).is_relative_to(tmp_path / "t")  # written in its own trial's folder
    # W&B: each trial its own finished run, with its own evaluations only
    runs = [Path(p) for p in glob.glob(str(tmp_path / "t" / "wandb" / "wandb" / "offline-run-*"))
            if not p.endswith("-summary")]
    assert len(runs) == 3
    for run in runs:
        steps = [row["step"] for row in wandb_history(run) if M.BLEU in row]
        assert steps == [3, 6], (run, steps)
    record("3 trials in one reused Ray worker against 3 new processes", workers_reused=len(set(pids("t"))),
           workers_fresh=len(set(pids("u"))), trials_equal=len(a))


@pytest.mark.slow
def test_gpu_trials_on_a_machine_without_gpus_are_refused(tmp_path: Path):
    proc = run_cli(str(write_sweep(tmp_path / "s.yaml", resources={"cpus": 1, "gpus": 1})),
                   "--results", str(tmp_path), env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2 and "`resources.gpus`: 1" in proc.stderr and "0 GPUs" in proc.stderr


@pytest.mark.slow
def test_a_second_sweep_with_the_same_base_reuses_its_base_model(tmp_path: Path):
    sweep = write_sweep(tmp_path / "s.yaml", search={"num_samples": 1, "max_concurrent": 1})
    first = run_cli(str(sweep), "--no-report", "--results", str(tmp_path))
    second = run_cli(str(sweep), "--no-report", "--results", str(tmp_path), "--set", "name=u", "--set", "search.seed=9")
    assert first.returncode == 0 and second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "training" in first.stdout and "found, reusing" in second.stdout
    assert f"no report (--no-report): headsweep report {tmp_path / 't'}" in first.stdout
    assert not (tmp_path / "t" / "report").exists()  # left for later, as asked
    assert len(list((tmp_path / "pretrained").iterdir())) == 1
    a, b = (pd.read_csv(tmp_path / name / "trials.csv") for name in ("t", "u"))
    assert a[a["stage"] == "pretrain"]["checkpoint"].tolist() == b[b["stage"] == "pretrain"]["checkpoint"].tolist()
    # the dry run of a third sweep on the same base says it is trained, and that the first sweep's folder is taken
    plan = run_cli(str(sweep), "--results", str(tmp_path), "--dry-run")
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert ": found: reused (or finished);" in plan.stdout and "(holds a sweep: needs --resume)" in plan.stdout


@pytest.mark.slow
@pytest.mark.ray_head
def test_sweep_on_a_two_node_cluster(tmp_path: Path, monkeypatch):
    with loopback_cluster(monkeypatch, num_cpus=1) as cluster:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        sweep = write_sweep(tmp_path / "s.yaml")
        proc = run_cli(str(sweep), "--address", cluster.address, "--no-report", "--results", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    df = check_table(tmp_path / "t", trials=2)
    assert len(df[df["stage"] == "pretrain"]) == 1


def test_cluster_launcher_config_passes_rays_own_validation():
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    text = (REPO / "sweeps" / "cluster.yaml").read_text()
    config = yaml.safe_load(text)
    validate_config(prepare_config(copy.deepcopy(config)))
    node_types = config["available_node_types"]
    assert node_types[config["head_node_type"]]["resources"] == {"CPU": 0}  # trials never land on the head
    assert any("--head" in c and "--num-cpus=0" in c for c in config["head_start_ray_commands"])
    assert any(t.get("resources", {}).get("GPU", 0) >= 1 for t in node_types.values())
    assert all("IamInstanceProfile" in t["node_config"] for t in node_types.values())  # S3 without keys
    assert any("pip install" in c and "headsweep[cluster]" in c for c in config["setup_commands"])
    pins = [c.split("==")[1].split("'")[0] for c in config["setup_commands"] if "ray[" in c and "==" in c]
    assert pins == [ray.__version__], f"cluster.yaml pins Ray {pins}; this machine runs {ray.__version__}"
    assert config["rsync_filter"] == [".gitignore"] and "results/" in (REPO / ".gitignore").read_text()
    # token authentication on every node, with the launcher's token copied to each
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all(c.startswith("RAY_AUTH_MODE=token ray start") for c in starts), starts
    keys = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith(("#", "- "))]
    assert all("#" in ln for ln in keys), [ln for ln in keys if "#" not in ln]  # every key commented
    broken = copy.deepcopy(config)
    broken["head_node_type"] = "no_such_type"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(broken))


@pytest.mark.slow
def test_one_sweep_runs_every_method_scores_the_test_set_and_compares_them(tmp_path: Path, record):
    """method: every one of them: each in its own folder with its own table, the budget methods at every (budget,
    seed), gates_budget fine-tuned as long as the baselines, scratch on the gate front's layouts, one comparison
    page; then the test split scores what validation chose (and only that), with intervals and paired tests."""
    methods = "[gates, gates_budget, importance, iterative, random, scratch]"
    distilled = {"gates.mode": "learned", "train.max_steps": 6, "train.eval_every": 3, "distill.weight": 0.5}
    sweep = write_sweep(tmp_path / "s.yaml", method="gates", test={"enabled": True, "beam_size": 2, "bootstrap": 200},
                        baselines={"budgets": [2, 8], "seeds": 2, "finetune_steps": [0, 3], "importance_batches": 2,
                                   "iterative_fraction": 0.25}, prune={"set": distilled})
    first = run_cli(str(sweep), "--results", str(tmp_path / "r"))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "test-set comparison: " in first.stdout  # every method of this run finished: its front is scored
    root = tmp_path / "r"
    gates = check_table(root / "t", trials=2)
    assert (gates[gates["stage"] == "prune"][M.DISTILL_LOSS] > 0).all()  # the gate trials distil from their base
    # the finished gate folder kept without its weights (as a repository keeps a sweep's record): the resume below
    # reruns none of its trials and takes their test scores from the cache
    weights = sorted((root / "t").rglob("step_*.pt"))
    assert weights and sorted((root / "t" / "test").glob("*.json"))
    for path in weights:
        path.unlink()
    # the baselines join the finished gate sweep: its trials are not rerun
    proc = run_cli(str(sweep), "--results", str(tmp_path / "r"), "--resume", "--set", f"method={methods}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    again = check_table(root / "t", trials=2, weights=False)
    assert dict(zip(again["trial_path"], again[M.BLEU])) == dict(zip(gates["trial_path"], gates[M.BLEU]))
    for name, steps in (("t-gates_budget", 3), ("t-importance", 0), ("t-importance-ft3", 3), ("t-iterative", 0),
                        ("t-iterative-ft3", 3), ("t-random", 0), ("t-random-ft3", 3)):
        df = check_table(root / name, trials=4, evaluations=1)
        prune = df[df["stage"] == "prune"]
        assert (prune["method"] == name.split("-")[1]).all()
        assert sorted(prune[M.open_heads_key("enc_self")]) == sorted(prune["param.baseline.budget"])
        assert sorted(zip(prune["param.baseline.budget"], prune["param.baseline.seed"])) == [
            (2, 0), (2, 1), (8, 0), (8, 1)]
        assert prune["seed"].nunique() == 4  # every point's seeds train differently
        assert set(prune["base"]) == set(gates[gates["stage"] == "pretrain"]["base"])
        assert (prune[M.STEP] == steps).all()
        if steps:  # every method that trains learns from the base model (distill in prune.set)
            assert (prune[M.DISTILL_LOSS] > 0).all(), prune.get(M.DISTILL_LOSS)
        if name == "t-gates_budget":  # the Lagrangian constraint's state at the last evaluation, in the table
            assert (prune[M.TARGET_OPEN] == prune["param.baseline.budget"]).all() and prune[M.LAMBDA2].notna().all()
    # one seed of a budget has one importance layout, fine-tuned or not
    for method in ("importance", "iterative"):
        layouts = [pd.read_csv(root / n / "trials.csv").query("stage == 'prune'").sort_values(
                   ["param.baseline.budget", "param.baseline.seed"])[["open_heads/enc_self/0", "open_heads/enc_self/1"]]
                   .to_numpy().tolist() for n in (f"t-{method}", f"t-{method}-ft3")]
        assert layouts[0] == layouts[1]
    # a layout of 8 heads is the unpruned base model: importance and random agree on it exactly
    full = [pd.read_csv(root / n / "trials.csv").query("`param.baseline.budget` == 8")[M.BLEU].iloc[0]
            for n in ("t-importance", "t-random")]
    assert full[0] == full[1]
    scratch = pd.read_csv(root / "t-scratch" / "trials.csv")
    scratch = scratch[scratch["stage"] == "prune"]
    assert "enc_self=4,4" in set(scratch["param.baseline.layout"])  # the full model, trained the same way
    front = gates[(gates["stage"] == "prune")]
    layouts = {f"enc_self={int(r['open_heads/enc_self/0'])},{int(r['open_heads/enc_self/1'])}"
               for _, r in front.iterrows()}
    assert set(scratch["param.baseline.layout"]) <= layouts | {"enc_self=4,4"}
    assert (scratch["status"] == "completed").all() and (scratch[M.STEP] == 6).all()
    assert not sorted((root / "t").rglob("step_*.pt"))  # no gate trial ran again
    assert "weights are not in this copy of the sweep" in (root / "t" / "report" / "report.html").read_text()
    page = (root / "t" / "report" / "methods.html").read_text()
    for label in ("gates", "gates at budget (3 steps)", "importance + 3 steps", "iterative", "random", "scratch",
                  "per seed (mean"):
        assert label in page
    assert "methods compared:" in proc.stdout

    # the test set scored what validation chose: the gate front, every budget point, scratch, the base model
    assert "test-set comparison: " in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    from analysis.load import load_sweep
    from analysis.pareto import pareto_front

    scored = pd.read_csv(root / "t" / "report" / "test_scores.csv", dtype={"trial_id": str})
    t = load_sweep(root / "t")
    chosen = set(pareto_front(t.completed, t.objectives, t.directions)["trial_id"].astype(str))
    gate_rows = scored[scored["method"] == "gates"]
    assert set(gate_rows["trial_id"]) == chosen and (gate_rows["chosen_on"] == "validation front").all()
    assert t.completed[t.completed["trial_id"].isin(chosen)]["test_bleu"].notna().all()  # beside validation BLEU
    assert t.completed[~t.completed["trial_id"].isin(chosen)]["test_bleu"].isna().all()  # never scored
    assert (scored["method"] == "base").sum() == 1
    for method in ("gates_budget", "importance", "iterative", "random"):
        assert (scored["method"] == method).sum() == (8 if method != "gates_budget" else 4)
    # every model that pruned itself says which heads of each layer it kept: those its trial ended with
    for name, method in (("t", "gates"), ("t-gates_budget", "gates_budget")):
        trials = pd.read_csv(root / name / "trials.csv", dtype={"trial_id": str}).set_index("trial_id")
        for _, row in scored[scored["method"] == method].iterrows():
            r = trials.loc[row["trial_id"]]
            assert row["layout"] == f"enc_self={int(r['open_heads/enc_self/0'])},{int(r['open_heads/enc_self/1'])}"
    assert (scored["sentences"] == 20).all() and scored["test_bleu_signature"].str.contains("nrefs:1").all()
    pairs = pd.read_csv(root / "t" / "report" / "test_comparisons.csv")
    # compared only at equal training: gates_budget with the 3-step folders, then importance with the other layout
    # methods, at 3 steps and among the 0-step folders
    compared = {steps: sorted(set(zip(g["A"], g["B"]))) for steps, g in pairs.groupby("fine-tuning steps")}
    gb, imp = "gates at budget (3 steps)", "importance + 3 steps"
    assert compared == {3: [(gb, imp), (gb, "iterative + 3 steps"), (gb, "random + 3 steps"),
                            (imp, "iterative + 3 steps"), (imp, "random + 3 steps")],
                        0: [("importance", "iterative"), ("importance", "random")]}, compared
    assert len(pairs) == 2 * (5 + 2)  # 2 budgets
    assert ((pairs["95% low"] <= pairs["A - B"]) & (pairs["A - B"] <= pairs["95% high"])).all()
    assert (pairs["seeds A"] == 2).all() and (pairs["seeds B"] == 2).all()
    # at 8 heads without fine-tuning every method evaluates the unpruned model: no difference at all
    at8 = pairs[(pairs["budget"] == 8) & (pairs["fine-tuning steps"] == 0)]
    assert len(at8) == 2 and (at8["A - B"] == 0).all() and (at8["verdict"] == "not resolved").all()
    md = (root / "t" / "report" / "comparison.md").read_text()
    assert "Chosen on the validation split" in md and "Base model: test BLEU" in md
    for _, r in pairs[pairs["verdict"] == "not resolved"].iterrows():  # a claim only where the interval says so
        claims = [ln for ln in md.splitlines() if ln.startswith(f"- At {r['budget']} heads with ")]
        assert not [ln for ln in claims if f"{r['A']} beats {r['B']} by" in ln or f"{r['B']} beats {r['A']} by" in ln]
    for line in [ln for ln in md.splitlines() if ln.startswith("- ") and " beats " in ln]:  # the winner's margin
        low, high = (float(v) for v in line.split("95% interval ")[1].split(",")[0].split(" to "))
        assert 0 < low <= high, line
    assert (root / "t" / "report" / "comparison.png").stat().st_size > 10_000
    # Table 2: every scratch layout against the same layout pruned from the trained model (the base for the full)
    table2 = pd.read_csv(root / "t" / "report" / "test_table2.csv")
    assert sorted(table2["layout"]) == sorted(set(scratch["param.baseline.layout"]))
    assert dict(zip(table2["layout"], table2["scratch seeds"])) == scratch.groupby("param.baseline.layout").size(
        ).to_dict()
    by_layout = dict(zip(table2["layout"], table2["pruned from trained"]))
    assert by_layout.pop("enc_self=4,4") == "base model"
    assert all(v.startswith("gates ") for v in by_layout.values()), by_layout  # front trials have those layouts
    margin = table2["pruned - scratch"]
    assert ((table2["95% low"] <= margin) & (margin <= table2["95% high"])).all()
    assert "Voita et al., Table 2" in md
    assert "## When the gates at a budget settled on the heads they keep" in md  # gates_budget's top-k over time
    assert (root / "t-importance" / "test_scores.csv").exists()

    # a second sweep of one method only (no gate folder) scores and compares what it ran, in its own folder, with
    # the first sweep's rows beside its own (test.include): the same base model, reused by its hash
    other = run_cli(str(sweep), "--results", str(tmp_path / "r"), "--set", "name=u", "--set", "method=[random]",
                    "--set", "baselines.finetune_steps=[3]", "--set", "test.include=[t]")
    assert other.returncode == 0, other.stdout[-3000:] + other.stderr[-3000:]
    assert "test-set comparison: " in other.stdout and not (root / "u").exists()
    md = (root / "u-random-ft3" / "report" / "comparison.md").read_text()
    assert "## Against the included sweeps (t): the same method at the same budget" in md
    included = pd.read_csv(root / "u-random-ft3" / "report" / "test_included.csv")
    assert sorted(set(zip(included["A"], included["B"], included["budget"]))) == [
        ("random + 3 steps", "random + 3 steps [t]", 2), ("random + 3 steps", "random + 3 steps [t]", 8)]
    scored = pd.read_csv(root / "u-random-ft3" / "report" / "test_scores.csv")
    assert (scored["method"] == "base").sum() == 1 and set(scored[scored["origin"] == "t"]["method"]) == {
        "gates", "gates_budget", "importance", "iterative", "random"}  # t's fine-tuned points and gate front
    again = subprocess.run([sys.executable, "-m", "analysis.testset", str(root / "t")], cwd=REPO,
                           capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0 and "test BLEU" not in again.stdout, again.stdout[-2000:] + again.stderr[-2000:]
    record("the test split scores what validation chose; a second scoring reuses every cached score",
           scored=len(scored), gate_front=len(gate_rows), gate_trials=len(t.completed),
           rescored=again.stdout.count("test BLEU"))


def test_a_sigterm_inside_a_callback_of_a_finished_worker_prints_no_traceback():
    """Ray's SIGTERM handler raises SystemExit; landing in a __del__ or weakref callback it was reported as
    'Exception ignored ... Traceback ... SystemExit'. The trial worker drops that report, and only that one."""
    code = ("import trainable\ntrainable._quiet_termination()\ntrainable._quiet_termination()\n"
            "class Exit:\n    def __del__(self):\n        raise SystemExit(1)\n"
            "class Broken:\n    def __del__(self):\n        raise ValueError('a real error')\n"
            "x = Exit(); del x\ny = Broken(); del y\nprint('still running')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "still running" in proc.stdout
    assert "SystemExit" not in proc.stderr and "ValueError: a real error" in proc.stderr


@pytest.mark.slow
def test_relative_corpus_paths_and_data_folders_are_resolved_on_the_driver(tmp_path: Path, record):
    """Trials run in Tune's trial folder: a corpus named relative to the user's working folder (and
    $HEADSWEEP_DATA given relative, used inside data.files) must still be found there."""
    from model.synthetic import generate_splits

    work = tmp_path / "work"
    for split, (src, tgt) in generate_splits(5, {"train": 400, "valid": 20, "test": 20}).items():
        folder = work / "corp"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{split}.en").write_text("\n".join(src) + "\n")
        (folder / f"{split}.de").write_text("\n".join(tgt) + "\n")
    base = copy.deepcopy(TINY)
    base["data"].pop("synthetic")
    base["data"].update(corpus="files", files={"train": "corp/train", "valid": "$HEADSWEEP_DATA/valid",
                                               "test": "corp/test"})
    sweep = write_sweep(work / "s.yaml", base=base, search={"num_samples": 1, "max_concurrent": 1})
    env = {**os.environ, "HEADSWEEP_DATA": "corp"}  # relative, as a user writes it
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, str(REPO / "trainable.py"), str(sweep), "--results", "results"], cwd=work,
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    df = check_table(work / "results" / "t", trials=1)
    recorded = json.loads((work / "results" / "t" / "sweep.json").read_text())["base"]["data"]
    assert recorded["files"] == {**recorded["files"], "train": str(work / "corp" / "train"),
                                 "valid": str(work / "corp" / "valid"), "test": str(work / "corp" / "test")}
    assert recorded["data_dir"] == str(work / "corp")
    record("relative corpus paths and a relative $HEADSWEEP_DATA, trials in Tune's trial folder",
           trials_completed=int((df["stage"] == "prune").sum()))


@pytest.mark.slow
def test_resume_refuses_a_damaged_tune_state_and_a_damaged_or_locked_study_and_changes_nothing(tmp_path: Path,
                                                                                                 record):
    """Tune writes its experiment state in place, and a second driver or a dashboard may hold optuna.db: --resume
    over a truncated or empty state file, a study that is not a database, or one locked by another process stops
    before Ray starts with an error naming the file, and leaves every file as it was; put back, the sweep resumes."""
    import sqlite3

    sweep = write_sweep(tmp_path / "s.yaml", search={"num_samples": 1, "max_concurrent": 1})
    assert run_cli(str(sweep), "--no-report", "--results", str(tmp_path)).returncode == 0
    experiment = tmp_path / "t"
    (state,) = sorted(experiment.glob("experiment_state-*.json"))[-1:]
    study = experiment / "optuna.db"
    originals = {p: p.read_bytes() for p in (state, study)}

    def snapshot() -> dict[str, bytes]:
        return {str(p): p.read_bytes() for p in sorted(experiment.rglob("*")) if p.is_file()}

    cases = {"truncated state": (state, originals[state][: len(originals[state]) // 2], str(state)),
             "empty state": (state, b"", str(state)),
             "damaged study": (study, b"not a database" * 100, f"{study}: the Optuna study is damaged")}
    refused = unchanged = 0
    for name, (path, damage, names) in cases.items():
        path.write_bytes(damage)
        before = snapshot()
        proc = run_cli(str(sweep), "--resume", "--no-report", "--results", str(tmp_path))
        assert proc.returncode == 2 and names in proc.stderr and "Traceback" not in proc.stderr, (name, proc.stderr)
        refused += 1
        unchanged += snapshot() == before
        path.write_bytes(originals[path])
    before = snapshot()  # read before the lock: closing any file of the database drops a process's POSIX locks
    holder = sqlite3.connect(study, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process's write lock
    try:
        proc = run_cli(str(sweep), "--resume", "--no-report", "--results", str(tmp_path))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert proc.returncode == 2 and "locked by another process" in proc.stderr, proc.stderr
    refused += 1
    unchanged += snapshot() == before
    assert refused == unchanged == len(cases) + 1
    again = run_cli(str(sweep), "--resume", "--no-report", "--results", str(tmp_path))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    record("--resume over a truncated or empty Tune state, a damaged study, a study locked by another process",
           cases=len(cases) + 1, refused_naming_the_file=refused, folders_left_unchanged=unchanged,
           resumed_after_repair=int(again.returncode == 0))
