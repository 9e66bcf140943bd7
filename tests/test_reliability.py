"""Faults injected into whole sweeps: the driver interrupted (SIGINT, SIGKILL) at several points and resumed, a
worker node removed from a two-node cluster mid-trial, W&B without a key, a network or a working backend, and no
secret in anything a sweep writes. docs/reliability.md records what each test injects and what it measured."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from ray.tune import ExperimentAnalysis

from model import metrics as M
from model.checkpoint import load_checkpoint
from sweeps.results import checkpoint_file
from tests.helpers import check_table, loopback_cluster, marked_processes, run_cli, start_cli, write_sweep

pytestmark = pytest.mark.slow  # every test here runs sweeps or a cluster

LONG_PRUNE = {"set": {"gates.mode": "learned", "train.max_steps": 300, "train.eval_every": 100}}
LONG_PRETRAIN = {"set": {"train.max_steps": 300, "train.eval_every": 100}}

# Loaded by every Python process of a sweep (driver and Ray workers inherit PYTHONPATH): each fsync of a training
# checkpoint's temporary file is announced in a file and held for a while, so that a kill lands inside the write.
SLOW_WRITES = textwrap.dedent("""
    import os, time
    _fsync = os.fsync
    def _slow_fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.basename(target).startswith(".step_") and target.endswith(".tmp"):
            with open(os.environ["HEADSWEEP_TEST_WRITES"], "a") as log:
                log.write(target + "\\n")
            time.sleep(2.0)
        _fsync(fd)
    os.fsync = _slow_fsync
""")


def kill_all(marker: str) -> None:
    """What a SIGKILL of the whole machine's sweep leaves behind is gone before the next start."""
    for pid in marked_processes(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.time() + 30
    while marked_processes(marker) and time.time() < deadline:
        time.sleep(0.2)


def wait_for(proc: subprocess.Popen, condition, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the sweep ended before {what}: " + proc.stdout.read()[-3000:]
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def saved_as_finished(experiment: Path) -> bool:
    """Whether Tune's saved experiment state records a trial as finished (TERMINATED)."""
    if not (experiment / "tuner.pkl").exists():
        return False
    try:
        return any(t.status == "TERMINATED" for t in ExperimentAnalysis(str(experiment)).trials)
    except Exception:  # the state is being written: ask again
        return False


def reports(folder: Path, pattern: str) -> dict[str, int]:
    """Trial folder name -> index of the newest checkpoint Tune has persisted for it plus one (0: none yet)."""
    return {p.name: max((int(c.name.split("_")[1]) + 1 for c in p.glob("checkpoint_*")), default=0)
            for p in folder.glob(pattern)}


def test_driver_interrupted_at_every_stage_then_resumed_loses_nothing(tmp_path: Path, record):
    """SIGINT and SIGKILL during pretraining, SIGKILL inside a checkpoint write and between trials: each time
    --resume continues; no finished trial runs again, every checkpoint loads, and Ray's results, the trials table and
    the Optuna study agree at the end."""
    sweep = write_sweep(tmp_path / "s.yaml", pretrain=LONG_PRETRAIN, prune=LONG_PRUNE,
                        search={"num_samples": 3, "max_concurrent": 1, "seed": 0})
    experiment, pretrained = tmp_path / "t", tmp_path / "pretrained"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SLOW_WRITES)
    marker = str(tmp_path)
    env = {"HEADSWEEP_TEST_RUN": marker}
    slow = {**env, "PYTHONPATH": f"{hooks}:{os.environ.get('PYTHONPATH', '')}",
            "HEADSWEEP_TEST_WRITES": str(tmp_path / "writes.log")}
    finished: dict[str, int] = {}  # trial -> mtime of its last checkpoint when it was first seen finished
    interruptions = []

    def note_finished() -> None:  # the trials Tune's saved state records as finished
        if not (experiment / "tuner.pkl").exists():
            return
        for trial in ExperimentAnalysis(str(experiment)).trials:
            if trial.status == "TERMINATED":
                (last,) = Path(trial.path).glob("checkpoint_000002")
                finished.setdefault(Path(trial.path).name, last.stat().st_mtime_ns)

    def interrupt(proc, sig, point):
        proc.send_signal(sig)
        try:
            out, _ = proc.communicate(timeout=120)
        finally:
            kill_all(marker)  # after SIGKILL, Ray's processes may outlive the driver
        assert proc.returncode != 0, out[-3000:]
        note_finished()
        interruptions.append((point, sig.name, proc.returncode))
        return out

    # 1) SIGINT while the base model trains
    proc = start_cli(str(sweep), "--no-report", "--results", str(tmp_path), env=env)
    wait_for(proc, lambda: any(n == 1 for n in reports(pretrained, "base-*/pretrain_trainable_*").values()),
             "the base model's first checkpoint")
    out = interrupt(proc, signal.SIGINT, "pretraining")
    assert "--resume" in out or "rerun the same command" in out, out[-3000:]
    # ... and SIGKILL once it has gone on from there
    proc = start_cli(str(sweep), "--resume", "--no-report", "--results", str(tmp_path), env=env)
    wait_for(proc, lambda: any(n == 2 for n in reports(pretrained, "base-*/pretrain_trainable_*").values()),
             "the base model's second checkpoint")
    interrupt(proc, signal.SIGKILL, "pretraining")

    # 2) SIGKILL while a trial writes a checkpoint (each write is held open for 2 s)
    proc = start_cli(str(sweep), "--resume", "--no-report", "--results", str(tmp_path), env=slow)
    writes = tmp_path / "writes.log"
    wait_for(proc, lambda: writes.exists() and "headsweep-" in writes.read_text() and any(reports(experiment,
             "prune_trainable_*").values()), "a trial's checkpoint write")
    interrupt(proc, signal.SIGKILL, "checkpoint write")

    # 3) SIGKILL once a trial has written its last checkpoint and Tune's saved state records one as finished (so
    #    that the final check has a finished trial to look at: without it, it would pass on nothing)
    proc = start_cli(str(sweep), "--resume", "--no-report", "--results", str(tmp_path), env=env)
    wait_for(proc, lambda: any(n >= 3 for n in reports(experiment, "prune_trainable_*").values())
             and saved_as_finished(experiment), "a trial's last checkpoint, recorded as finished in Tune's state")
    interrupt(proc, signal.SIGKILL, "between trials")

    resumed = run_cli(str(sweep), "--resume", "--no-report", "--results", str(tmp_path), env=env)
    kill_all(marker)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert [p for p, _, _ in interruptions] == ["pretraining", "pretraining", "checkpoint write", "between trials"]

    # the sweep has its num_samples trials, each complete, with every evaluation's checkpoint readable
    df = pd.read_csv(experiment / "trials.csv")
    prune = df[df["stage"] == "prune"]
    assert len(prune) == 3 and (prune["status"] == "completed").all(), prune[["trial_id", "status", "error"]]
    for folder in [*experiment.glob("prune_trainable_*/checkpoint_*"),
                   *pretrained.glob("base-*/pretrain_trainable_*/checkpoint_*")]:
        load_checkpoint(checkpoint_file(folder))
    rerun = sum((experiment / name / "checkpoint_000002").stat().st_mtime_ns != mtime
                for name, mtime in finished.items())
    assert finished and rerun == 0, finished  # a finished trial was not run again
    # every evaluation is in the results, in order; one is there twice only where the driver was killed after Ray
    # logged it (progress.csv, on local storage written at once) and before Tune's next state save: the trial then
    # resumes from the checkpoint before and evaluates again, and that evaluation must be the same one, bit for bit
    # (whether a kill lands in that gap is chance here; test_faults.py's kill held inside a checkpoint write makes
    # the repeat happen every time and checks that the redone steps end where an unbroken run ends)
    redone, evaluations, trial_folders = 0, 0, sorted(experiment.glob("prune_trainable_*"))
    assert len(trial_folders) == 3, [p.name for p in trial_folders]
    for trial in trial_folders:
        progress = pd.read_csv(trial / "progress.csv")
        steps = list(progress[M.STEP])
        redone += len(steps) - len(set(steps))
        evaluations += len(set(steps))
        assert sorted(set(steps)) == [100, 200, 300] and steps == sorted(steps), (trial.name, steps)
        for step, rows in progress.groupby(M.STEP):
            assert len(rows[[M.BLEU, M.OPEN_HEADS, "valid_nll"]].drop_duplicates()) == 1, (trial.name, step, rows)
    # the table agrees with Ray's results, and every trial Optuna counts as complete is in the table with its values
    objectives = [M.BLEU, M.OPEN_HEADS]
    for _, row in prune.iterrows():
        last = pd.read_csv(Path(row["trial_path"]) / "progress.csv").iloc[-1]
        assert [last[o] for o in objectives] == [row[o] for o in objectives], row["trial_id"]
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{experiment / 'optuna.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    table = {round(float(r["param.gates.penalty"]), 12): r for _, r in prune.iterrows()}
    for trial in complete:
        row = table[round(float(trial.params["gates.penalty"]), 12)]
        assert trial.values == [row[o] for o in objectives], (trial.params, trial.values)
    record("sweep driver interrupted: SIGINT and SIGKILL while the base model trains, SIGKILL inside a trial's "
           "checkpoint write, SIGKILL right after a trial's last checkpoint; --resume each time",
           interruptions=len(interruptions), trials=len(prune),
           trials_lost=3 - int((prune["status"] == "completed").sum()), finished_before_last_stop=len(finished),
           finished_trials_rerun=rerun,
           evaluations_redone=redone, evaluations=evaluations, optuna_complete=len(complete))


@pytest.mark.ray_head
def test_a_worker_node_removed_mid_trial_is_replaced_and_the_trial_resumes_on_another_node(tmp_path: Path, record,
                                                                                            monkeypatch, s3_server):
    """A two-node cluster whose head has no CPUs for trials, results on S3: the trial runs on worker A; once it has
    reported a checkpoint to the bucket, A is removed and worker B joins. Tune retries the trial on B from its last
    checkpoint, read back from the bucket (B shares no disk with A). (A is removed first, at the first of ten
    evaluations, so that the trial cannot finish before its node is gone.)"""
    from sweeps.storage import download

    results = s3_server.uri("node-removed")
    with loopback_cluster(monkeypatch, num_cpus=0) as cluster:
        node_a = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        recipe = {"set": {"gates.mode": "learned", "train.max_steps": 1000, "train.eval_every": 100}}
        sweep = write_sweep(tmp_path / "s.yaml", pretrain={"enabled": False}, prune=recipe,
                            search={"num_samples": 1, "max_concurrent": 1, "max_failures": 2})
        proc = start_cli(str(sweep), "--address", cluster.address, "--no-report", "--results", results)
        wait_for(proc, lambda: any(k.endswith("checkpoint_000000/metrics.jsonl") for k in s3_server.keys(
            "node-removed/t")), "the trial's first checkpoint in the bucket")
        cluster.remove_node(node_a)
        deadline = time.time() + 60
        while node_a.live_processes() and time.time() < deadline:
            time.sleep(0.2)
        removed = int(not node_a.live_processes())  # its raylet and the processes it started are gone
        assert removed == 1, "node A's processes outlived its removal by 60 s"
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]
    experiment = download(results + "/t", tmp_path / "copy", skip=(".pt",))
    df = pd.read_csv(experiment / "trials.csv")
    prune = df[df["stage"] == "prune"]
    assert len(prune) == 1 and prune["status"].tolist() == ["completed"] and prune[M.STEP].tolist() == [1000]
    checkpoint_file(prune["checkpoint"].iloc[0])  # the final checkpoint, from the bucket, holds one step_*.pt
    (trial,) = experiment.glob("prune_trainable_*")
    progress = pd.read_csv(trial / "progress.csv")
    assert set(progress[M.STEP]) == set(range(100, 1001, 100))
    retried = "The trial terminated successfully after retrying" in out or "1*" in out
    assert retried, out[-3000:]  # the node's loss failed the trial once and Tune retried it
    # from its checkpoint in the bucket, not from scratch: the first evaluation, persisted before the node went,
    # is never redone
    assert (progress[M.STEP] == 100).sum() == 1, list(progress[M.STEP])
    # the driver lived on, so Tune resumes the trial from the checkpoint of its last reported evaluation: none
    # is reported twice
    repeated = len(progress) - progress[M.STEP].nunique()
    assert repeated == 0, list(progress[M.STEP])
    record("worker node removed mid-trial (two-node local cluster, results on S3); a new node joins",
           nodes_removed=removed, trials=len(prune), trials_completed=int((prune["status"] == "completed").sum()),
           evaluations_redone=repeated, evaluations=int(progress[M.STEP].nunique()))


FAKE_KEY = "5ec7e7f00d5ec7e7f00d5ec7e7f00d5ec7e7f00d"  # 40 hex characters, shaped like a W&B API key


def test_wandb_with_a_key_but_no_reachable_backend_stays_offline_on_time_and_no_secret_is_written(tmp_path: Path,
                                                                                                    record):
    """The same sweep with W&B disabled, then online with a key and a backend that refuses connections (a closed
    port on 127.0.0.1): it finishes, every run is kept offline, it takes about as long, and the key appears in no
    file the sweep wrote."""
    timings = {}
    env = {"WANDB_API_KEY": FAKE_KEY, "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_MODE": ""}
    for mode in ("disabled", "online"):
        sweep = write_sweep(tmp_path / f"{mode}.yaml", name=mode, search={"num_samples": 2, "max_concurrent": 2},
                            pretrain={"enabled": False},
                            wandb={"mode": mode, "project": "p", "init_timeout": 10, "upload_timeout": 5})
        start = time.perf_counter()
        proc = run_cli(str(sweep), "--results", str(tmp_path / "r"), env=env)
        timings[mode] = time.perf_counter() - start
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert FAKE_KEY not in proc.stdout + proc.stderr
        assert (mode == "disabled") != ("every run of this sweep is kept offline" in proc.stdout), proc.stdout[-2000:]
    check_table(tmp_path / "r" / "online", trials=2)
    runs = sorted(p.name for p in (tmp_path / "r" / "online" / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 3 and runs[-1].endswith("-summary"), runs  # both trials and the sweep's summary run
    # no wait on the unreachable backend's retries (W&B's own go on for up to half an hour): a bound that holds on a
    # machine loaded by other work too, where the two runs' own times differ by a minute or more
    assert timings["online"] < timings["disabled"] + 600, timings
    files = [path for path in (tmp_path / "r").rglob("*") if path.is_file()]
    with_key = [path for path in files if FAKE_KEY.encode() in path.read_bytes()]
    scanned = len(files)
    assert scanned > 50 and with_key == [], with_key
    record("W&B online with a key, backend unreachable (connection refused); key grep over every output file",
           seconds_disabled=round(timings["disabled"]), seconds_unreachable=round(timings["online"]),
           runs_kept_offline=len(runs), files_scanned=scanned, files_with_key=len(with_key))


def test_a_driver_killed_inside_the_trials_table_write_is_resumed_with_a_whole_table(tmp_path: Path, record):
    """The driver is held with half of trials.csv's temporary file written (the last write of the sweep) and
    killed there: the table on disk is absent or the previous one, never half of one; --resume reruns no trial and
    writes the whole table, leaving no temporary file."""
    sweep = write_sweep(tmp_path / "s.yaml", search={"num_samples": 2, "max_concurrent": 2})
    marker, log = str(tmp_path), tmp_path / "fault.log"
    env = {"HEADSWEEP_TEST_RUN": marker, "HEADSWEEP_FAULT_AT": "partial:trials.csv", "HEADSWEEP_FAULT_LOG": str(log)}
    proc = start_cli(str(sweep), "--no-report", "--results", str(tmp_path), env=env)
    wait_for(proc, lambda: log.exists() and f" partial {tmp_path / 't' / 'trials.csv'} " in log.read_text(),
             "the driver held inside the trials table's write")
    pid = int(log.read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    kill_all(marker)
    landed = int(pid == proc.pid)  # the driver itself was held there
    experiment = tmp_path / "t"
    partial = list(experiment.glob(".trials.csv.*.tmp"))
    tables_before = int((experiment / "trials.csv").exists())  # the first write of the table: none, never half
    assert landed and len(partial) == 1 and tables_before == 0
    checkpoints = {p: p.stat().st_mtime_ns for p in experiment.glob("prune_trainable_*/checkpoint_*")}
    resumed = run_cli(str(sweep), "--resume", "--no-report", "--results", str(tmp_path))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    df = check_table(experiment, trials=2)
    rerun = sum(p.stat().st_mtime_ns != t for p, t in checkpoints.items())
    left = list(experiment.glob(".trials.csv.*.tmp"))
    assert rerun == 0 and left == []
    record("driver SIGKILL held inside the trials table's write (half its temporary file written), then --resume",
           landed_at_the_point=landed, temp_files_at_the_kill=len(partial), tables_on_disk_at_the_kill=tables_before,
           trials=int((df["stage"] == "prune").sum()), checkpoints_rewritten=rerun, temp_files_after_resume=len(left))


def test_a_driver_killed_inside_the_optuna_study_write_is_resumed_with_a_whole_study(tmp_path: Path, record):
    """The driver is held inside the SQLite transaction that records the first finished trial in optuna.db (the
    row written, SQLite's journal on disk, not committed) and killed there: --resume finds the study whole (SQLite
    rolls the transaction back), every trial ends completed in the table, no finished checkpoint is written again,
    and no trial in the study is COMPLETE without both objectives."""
    sweep = write_sweep(tmp_path / "s.yaml", search={"num_samples": 2, "max_concurrent": 2})
    marker, log = str(tmp_path), tmp_path / "fault.log"
    experiment = tmp_path / "t"
    env = {"HEADSWEEP_TEST_RUN": marker, "HEADSWEEP_FAULT_AT": "commit:optuna.db", "HEADSWEEP_FAULT_LOG": str(log)}
    proc = start_cli(str(sweep), "--no-report", "--results", str(tmp_path), env=env)
    wait_for(proc, lambda: log.exists() and f" commit {experiment / 'optuna.db'} " in log.read_text(),
             "the driver held inside the study's write of a finished trial")
    pid = int(log.read_text().split()[0])
    journal = experiment / "optuna.db-journal"
    in_transaction = int(journal.exists() and journal.stat().st_size > 0)  # the write begun, not committed
    os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    kill_all(marker)
    landed = int(pid == proc.pid and in_transaction == 1)
    assert landed, (pid, proc.pid, in_transaction)
    checkpoints = {p: p.stat().st_mtime_ns for p in experiment.glob("prune_trainable_*/checkpoint_*")}
    resumed = run_cli(str(sweep), "--resume", "--no-report", "--results", str(tmp_path))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    df = check_table(experiment, trials=2)
    rewritten = sum(p.stat().st_mtime_ns != t for p, t in checkpoints.items())
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{experiment / 'optuna.db'}")
    half = [t.number for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
            and (t.values is None or len(t.values) != 2)]
    complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert checkpoints and rewritten == 0 and half == [] and complete >= 1, (rewritten, half, complete)
    record("driver SIGKILL held inside optuna.db's transaction recording a finished trial (journal on disk, not "
           "committed), then --resume", landed_at_the_point=landed, checkpoints_at_the_kill=len(checkpoints),
           trials=int((df["stage"] == "prune").sum()), checkpoints_rewritten=rewritten,
           study_trials=len(study.trials), complete_in_study=complete, complete_without_values=len(half))


def test_a_resume_whose_searcher_state_is_older_than_tunes_finishes_every_trial(tmp_path: Path, record):
    """Tune copies its experiment state, the search wrappers' state and the Optuna searcher's pickle to the results
    folder one file after another; a driver killed in between leaves a state naming a trial that the saved
    searcher never suggested (the interrupted-driver test met it once: OptunaSearch's KeyError then stopped every
    resume). Made here on purpose: the searcher's pickle read before Tune's saved state named an unfinished trial
    is put back after the driver is killed. --resume finishes every trial, and the study holds each once."""
    # trials of ~10 s, longer than Tune's state period, so that a new trial is saved while it runs
    recipe = {"set": {"gates.mode": "learned", "train.max_steps": 600, "train.eval_every": 200}}
    sweep = write_sweep(tmp_path / "s.yaml", prune=recipe, search={"num_samples": 3, "max_concurrent": 1, "seed": 0})
    experiment, marker = tmp_path / "t", str(tmp_path)
    env = {"HEADSWEEP_TEST_RUN": marker}

    def named() -> dict[str, str]:  # trial -> status, as Tune's saved state has them
        if not (experiment / "tuner.pkl").exists():
            return {}
        try:
            return {t.trial_id: t.status for t in ExperimentAnalysis(str(experiment)).trials}
        except Exception:  # the state is being written: ask again
            return {}

    proc = start_cli(str(sweep), "--no-report", "--results", str(tmp_path), env=env)
    old: dict[Path, bytes] = {}
    known: set[str] = set()  # the trials Tune's state named when `old` was read

    def ahead() -> bool:
        """Tune's state names an unfinished trial it did not name when the searcher's pickle was read; else the
        pickle is read again."""
        # the searcher's files first, then Tune's state: Tune writes its state before the searcher's, so files
        # read first are no newer than the state read after them, and know no trial that state does not name
        files = {p: p.read_bytes() for p in experiment.glob("searcher-state-*.pkl")}
        trials = named()
        if old and any(t not in known and status != "TERMINATED" for t, status in trials.items()):
            return True
        if trials and files:
            old.clear()
            old.update(files)
            known.clear()
            known.update(trials)
        return False

    wait_for(proc, ahead, "Tune's saved state naming an unfinished trial the saved searcher may not know")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    kill_all(marker)
    for path, data in old.items():
        path.write_bytes(data)  # what a kill between the state's files leaves in the results folder
    resumed = run_cli(str(sweep), "--resume", "--no-report", "--results", str(tmp_path), env=env)
    kill_all(marker)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    told = resumed.stdout.count("unknown to the restored Optuna searcher")
    assert told >= 1, resumed.stdout[-3000:]  # the case was made
    df = check_table(experiment, trials=3, evaluations=3)
    prune = df[df["stage"] == "prune"]
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{experiment / 'optuna.db'}")
    ids = [t.user_attrs.get("ray_trial_id") for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(ids) == sorted(prune["trial_id"].astype(str)), (ids, list(prune["trial_id"]))
    record("driver SIGKILL with Tune's state one trial ahead of the Optuna searcher's saved state, then --resume",
           searcher_files_put_back=len(old), trials_unknown_to_the_searcher=told, trials=len(prune),
           trials_completed=int((prune["status"] == "completed").sum()), study_complete=len(ids),
           study_trials_twice=len(ids) - len(set(ids)))
