"""Results on S3-compatible storage (moto's server on 127.0.0.1): the storage helpers, the Optuna study that travels
with Tune's state, and a sweep interrupted on one driver and finished by another that starts from an empty disk."""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from model import metrics as M
from model.config import ConfigError
from sweeps.storage import StorageError, check_uri, download, upload, uri_of
from tests.helpers import REPO, SHARED_DATA, stop_ray_in, write_sweep


def test_a_results_uri_is_checked_with_what_is_allowed():
    assert check_uri("s3://bucket/a/b/") == "s3://bucket/a/b"
    with pytest.raises(StorageError, match="AWS_ENDPOINT_URL"):
        check_uri("s3://bucket/x?endpoint_override=127.0.0.1:9000")
    with pytest.raises(StorageError, match="scheme://bucket"):
        check_uri("s3://")
    from sweeps.validate import load_sweep

    with pytest.raises(ConfigError, match=r"storage \(or --results\).*query string"):
        load_sweep(REPO / "sweeps" / "quickstart.yaml", storage="s3://b/x?scheme=http")


def test_ray_paths_get_their_scheme_back():
    import pyarrow.fs

    assert uri_of(pyarrow.fs.LocalFileSystem(), "/r/t") == "/r/t"
    assert uri_of(pyarrow.fs.S3FileSystem(region="us-east-1"), "bucket/r/t") == "s3://bucket/r/t"


def test_every_uri_filesystem_retries_for_the_patience_asked_and_keeps_it_when_pickled(monkeypatch):
    import datetime

    import pyarrow.fs

    from sweeps import storage

    gcs = storage.patient(pyarrow.fs.GcsFileSystem(anonymous=True), 42)
    assert pickle.loads(pickle.dumps(gcs)).__reduce__()[1][0]["retry_time_limit"] == datetime.timedelta(seconds=42)
    s3 = storage.patient(pyarrow.fs.S3FileSystem(region="us-east-1", endpoint_override="http://127.0.0.1:1"), 42)
    assert isinstance(pickle.loads(pickle.dumps(s3)), storage.PatientS3FileSystem) and s3.patience == 42
    local = pyarrow.fs.LocalFileSystem()
    assert storage.patient(local, 42) is local
    # the doubling delays add up to at least the patience, and one retry fewer would not
    for patience in (0.0, 1.0, 20.0, 600.0):
        n = storage.s3_retries(patience)
        assert storage.FIRST_RETRY_S * (2 ** n - 1) >= patience and (n == 0 or storage.FIRST_RETRY_S * (
            2 ** (n - 1) - 1) < patience)
    monkeypatch.delenv(storage.RETRY_ENV, raising=False)
    assert storage.storage_patience() == storage.DEFAULT_PATIENCE_S
    for bad in ("-1", "inf", "nan", "ten"):
        monkeypatch.setenv(storage.RETRY_ENV, bad)
        with pytest.raises(StorageError, match=storage.RETRY_ENV):
            storage.storage_patience()


def test_upload_and_download_round_trip_and_leave_out_what_is_skipped(s3_server, tmp_path: Path):
    src = tmp_path / "src"
    (src / "checkpoint_000001").mkdir(parents=True)
    (src / "checkpoint_000001" / "metrics.jsonl").write_text('{"step": 1}\n')
    (src / "checkpoint_000001" / "step_1.pt").write_bytes(b"\0" * 1000)
    (src / "trials.csv").write_text("a\n1\n")
    uri = s3_server.uri("roundtrip")
    upload(src, uri)
    assert s3_server.keys("roundtrip") == {"roundtrip/trials.csv": 4, "roundtrip/checkpoint_000001/metrics.jsonl": 12,
                                           "roundtrip/checkpoint_000001/step_1.pt": 1000}
    top = download(uri, tmp_path / "top", recursive=False)
    assert sorted(p.name for p in top.rglob("*")) == ["trials.csv"]
    logs = download(uri + "/checkpoint_000001", tmp_path / "logs", skip=(".pt",))
    assert sorted(p.name for p in logs.iterdir()) == ["metrics.jsonl"]
    (src / "trials.csv").write_text("a\n2\n")  # rewritten with the same size: kept unless refreshed
    upload(src / "trials.csv", uri + "/trials.csv")
    assert (download(uri, tmp_path / "top", recursive=False) / "trials.csv").read_text() == "a\n1\n"
    assert (download(uri, tmp_path / "top", recursive=False, refresh=True) / "trials.csv").read_text() == "a\n2\n"
    with pytest.raises(StorageError, match="not found"):
        download(s3_server.uri("nothing-here"), tmp_path / "none")


def test_storage_requests_wait_out_an_s3_server_that_goes_away_and_comes_back(s3_outage, tmp_path: Path,
                                                                             monkeypatch, record):
    """Every request to a URI, through the helpers and through the filesystem Ray pickles to its trials, waits
    for a server that stops answering and returns; with no patience it fails at once; a bad setting is refused."""
    import threading

    from sweeps import storage

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_outage.env["AWS_ENDPOINT_URL"])
    monkeypatch.setenv(storage.RETRY_ENV, "60")
    uri = "s3://headsweep/outage"
    storage.write_text(uri + "/before.txt", "before")
    path, fs = storage.ray_storage(uri)
    assert path == "headsweep/outage" and isinstance(fs, storage.PatientS3FileSystem)
    shipped = pickle.loads(pickle.dumps(fs))  # what a trial gets from Ray
    assert type(shipped) is storage.PatientS3FileSystem and shipped.patience == 60 and shipped == fs

    outage_s, durations = 3.0, {}
    operations = {
        "write": lambda: storage.write_text(uri + "/during.txt", "during"),
        "read": lambda: storage.read_bytes(uri + "/before.txt"),
        "exists": lambda: storage.exists(uri + "/before.txt"),
        "pickled": lambda: shipped.get_file_info(path + "/before.txt").size,
        "upload": lambda: storage.upload(tmp_path, uri + "/folder"),
    }
    (tmp_path / "a.txt").write_text("a")
    for name, operation in operations.items():
        s3_outage.stop()
        back = threading.Timer(outage_s, s3_outage.start)
        back.start()
        start = time.perf_counter()
        result = operation()
        durations[name] = time.perf_counter() - start
        back.join()
        assert durations[name] >= outage_s * 0.9, (name, durations[name])  # it did meet the outage
        assert result in (None, True, 6, b"before"), (name, result)
    assert storage.read_bytes(uri + "/during.txt") == b"during"
    assert storage.read_bytes(uri + "/folder/a.txt") == b"a"
    met = s3_outage.reset
    assert met >= len(operations), met

    monkeypatch.setenv(storage.RETRY_ENV, "0")
    s3_outage.stop()
    start = time.perf_counter()
    with pytest.raises(OSError):
        storage.read_bytes(uri + "/before.txt")
    impatient_s = time.perf_counter() - start
    s3_outage.start()
    assert impatient_s < outage_s
    monkeypatch.setenv(storage.RETRY_ENV, "soon")
    with pytest.raises(StorageError, match=f"{storage.RETRY_ENV}='soon'.*>= 0"):
        storage.filesystem(uri)
    record("S3 server gone for 3 s during each storage request (helpers, a pickled filesystem)",
           requests=len(operations), requests_completed=len(durations), connections_reset=met,
           slowest_request_s=round(max(durations.values()), 1), without_patience_failed_after_s=round(impatient_s, 1))


def test_a_remote_sweeps_study_opens_on_the_unpickling_machine(tmp_path: Path, monkeypatch):
    """Tune pickles the searcher with Optuna's storage; unpickled on another machine (another temporary folder),
    the storage opens that machine's copy of the study, never the path of the machine that pickled it."""
    from sweeps.study import StudyStorage, study_file

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "first"))
    experiment = "s3://bucket/sweeps/t"
    study = optuna.create_study(storage=StudyStorage(experiment), study_name="t", directions=["maximize"])
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, values=[1.0]))
    blob = pickle.dumps(study._storage)
    first = study_file(experiment)
    assert first.is_relative_to(tmp_path / "first") and first.exists()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "second"))
    second = study_file(experiment)
    (tmp_path / "second").mkdir()
    from sweeps.storage import snapshot_sqlite

    snapshot_sqlite(first, second)  # what the resumed driver downloads from the storage
    restored = pickle.loads(blob)
    assert (getattr(restored, "_backend", restored)).url == f"sqlite:///{second}"
    assert len(optuna.load_study(study_name="t", storage=f"sqlite:///{second}").trials) == 1
    local = StudyStorage(str(tmp_path / "local-sweep"))  # on local storage the study stays in the sweep folder
    assert local.url == f"sqlite:///{tmp_path / 'local-sweep' / 'optuna.db'}"


def test_a_sqlite_snapshot_taken_during_writes_is_a_consistent_database(tmp_path: Path):
    from sweeps.storage import snapshot_sqlite

    db = tmp_path / "a.db"
    con = sqlite3.connect(db)
    con.execute("create table t (x integer)")
    con.executemany("insert into t values (?)", [(i,) for i in range(1000)])
    con.commit()
    con.execute("insert into t values (-1)")  # an open transaction is not in the snapshot
    snapshot_sqlite(db, tmp_path / "copy.db")
    con.rollback()
    copy = sqlite3.connect(tmp_path / "copy.db")
    assert copy.execute("select count(*), min(x) from t").fetchone() == (1000, 0)
    assert not list(tmp_path.glob(".copy.db.*"))  # no temporary file left


_DRIVER_RAY_DIRS: list[str] = []


@pytest.fixture(autouse=True)
def _remove_driver_ray_dirs():
    """Each driver's Ray folder (in /tmp: Ray's socket paths must stay short) is removed after its test, once
    whatever Ray it started is stopped."""
    yield
    while _DRIVER_RAY_DIRS:
        folder = _DRIVER_RAY_DIRS.pop()
        stop_ray_in(folder)
        shutil.rmtree(folder, ignore_errors=True)


def _driver(args: list[str], cwd: Path, home: Path, s3_env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The sweep command as a driver on its own machine would run it: its own working folder, HOME, temporary
    folder, Ray folder and cache; the storage reached through AWS_ENDPOINT_URL."""
    for sub in ("tmp", "cache"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths live below it
    _DRIVER_RAY_DIRS.append(ray_tmp)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEADSWEEP_", "WANDB_", "RAY_"))}
    env.update(s3_env, HEADSWEEP_TEST_SESSION=os.environ["HEADSWEEP_TEST_SESSION"], HOME=str(home), TMPDIR=str(home / "tmp"), RAY_TMPDIR=ray_tmp,
               HEADSWEEP_CACHE=str(home / "cache"), HEADSWEEP_DATA=str(SHARED_DATA), RAY_DEDUP_LOGS="0",
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    cwd.mkdir(parents=True, exist_ok=True)
    return [sys.executable, str(REPO / "trainable.py"), *args], env


@pytest.mark.slow
def test_a_sweep_on_s3_interrupted_and_resumed_by_a_driver_with_an_empty_disk(s3_server, tmp_path: Path, record):
    """Everything a local sweep has, on s3://: base checkpoints and trials in the bucket, full URIs in trials.csv,
    the Optuna study, the report (written from yet another machine), offline W&B runs; a driver stopped mid-sweep, and the sweep finished by another
    driver whose working folder, HOME, temporary folder and cache hold nothing of it. A second method waits for the
    gate trials; the stopped sweep is refused without --resume and when changed, and finished unchanged."""
    sweep = write_sweep(tmp_path / "s.yaml", search={"num_samples": 3, "max_concurrent": 1, "seed": 0},
                        prune={"set": {"gates.mode": "learned", "train.max_steps": 200, "train.eval_every": 100}},
                        method=["gates", "importance"], baselines={"budgets": [2, 8], "importance_batches": 1, "seeds": 1},
                        wandb={"mode": "offline"})
    results = s3_server.uri("interrupted")
    cmd, env = _driver([str(sweep), "--results", results], tmp_path / "first" / "work", tmp_path / "first", s3_server.env)
    proc = subprocess.Popen(cmd, cwd=tmp_path / "first" / "work", env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline, polls = time.time() + 300, 0
    while time.time() < deadline:  # stop once one trial has finished and the next has reported
        keys = s3_server.keys("interrupted/t")
        trials = {k.split("/")[2] for k in keys if "/prune_trainable_" in k and "/checkpoint_" in k}
        done = {k.split("/")[2] for k in keys if k.endswith("checkpoint_000001/metrics.jsonl")}
        polls += 1
        if done and len(trials) > len(done):
            break
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.3)
    assert done and len(trials) > len(done), f"no trial finished within 300 s ({polls} polls)"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 1 and "--resume" in out, out[-3000:]
    assert "not reached: importance" in out, out[-3000:]
    assert not any(k.startswith("interrupted/t-importance/") for k in s3_server.keys("interrupted")), \
        "a later method started before the gate trials finished"
    finished = {name: keys[f"interrupted/t/{name}/checkpoint_000001/metrics.jsonl"] for name in done}
    stopped_study = s3_server.keys("interrupted/t").get("interrupted/t/optuna.db")
    assert stopped_study, "the study did not travel with Tune's experiment state"

    refusals = {}
    for name, extra in (("again", []), ("changed", ["--resume", "--set", "search.num_samples=5"])):
        cmd, env = _driver([str(sweep), "--results", results, *extra], tmp_path / name / "work", tmp_path / name,
                           s3_server.env)
        refusals[name] = subprocess.run(cmd, cwd=tmp_path / name / "work", env=env, capture_output=True, text=True,
                                        timeout=300, check=False)
    assert refusals["again"].returncode == 2 and "--resume" in refusals["again"].stderr  # never starts over
    assert refusals["changed"].returncode == 2 and "search.num_samples: 3 -> 5" in refusals["changed"].stderr

    start = time.perf_counter()
    cmd, env = _driver([str(sweep), "--results", results, "--resume", "--no-report"], tmp_path / "second" / "work",
                       tmp_path / "second", s3_server.env)
    resumed = subprocess.run(cmd, cwd=tmp_path / "second" / "work", env=env, capture_output=True, text=True,
                             timeout=600, check=False)
    resume_seconds = time.perf_counter() - start
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming " + results + "/t" in resumed.stdout
    keys = s3_server.keys("interrupted")
    for name, size in finished.items():  # a finished trial is not run again
        assert keys[f"interrupted/t/{name}/checkpoint_000001/metrics.jsonl"] == size
        assert not any(k.startswith(f"interrupted/t/{name}/checkpoint_000002") for k in keys)

    trial_names = {k.split("/")[2] for k in keys if k.startswith("interrupted/t/prune_trainable_")}
    assert len(trial_names) == 3, trial_names
    for name in trial_names:  # each evaluation reported once, in order
        steps = list(pd.read_csv(download(f"{results}/t/{name}/progress.csv", tmp_path / name / "p.csv"))[M.STEP])
        assert steps == [100, 200], (name, steps)
    importance = pd.read_csv(download(results + "/t-importance/trials.csv", tmp_path / "imp.csv"))
    importance = importance.query("stage == 'prune'")
    assert sorted(importance["param.baseline.budget"]) == [2, 8] and (importance["status"] == "completed").all()
    table = download(results + "/t/trials.csv", tmp_path / "trials.csv")
    df = pd.read_csv(table)
    prune = df[df["stage"] == "prune"]
    assert len(prune) == 3 and (prune["status"] == "completed").all(), prune[["trial_id", "status", "error"]]
    for column in ("checkpoint", "trial_path", "wandb_run"):  # full URIs, each naming something in the bucket
        for value in df[column]:
            assert value.startswith(results + "/"), (column, value)
            assert any(k.startswith(value[len("s3://headsweep/"):]) for k in keys), (column, value)
    base = df[df["stage"] == "pretrain"].iloc[0]
    assert base["checkpoint"].startswith(results + "/pretrained/base-")
    assert any(k.endswith(".wandb") for k in keys if "/wandb/offline-run-" in k)  # W&B runs collected
    assert not list((tmp_path / "second" / "work").iterdir()), "the driver wrote into its working folder"

    study_copy = download(results + "/t/optuna.db", tmp_path / "optuna.db")
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{study_copy}")
    tied = {t.user_attrs.get("ray_trial_id") for t in study.trials}
    assert set(prune["trial_id"].astype(str)) <= tied, (tied, list(prune["trial_id"]))

    # the analysis commands read the sweep from the bucket, from yet another machine's empty cache
    cmd, env = _driver([], tmp_path / "third" / "work", tmp_path / "third", s3_server.env)
    report = subprocess.run([sys.executable, "-m", "analysis.report", results + "/t"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600, check=False)
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    assert f"(uploaded to {results}/t/report)" in report.stdout
    assert s3_server.keys("interrupted/t/report").get("interrupted/t/report/report.html"), "the report is not there"
    local = Path(report.stdout.split("report: ", 1)[1].split(" (uploaded")[0])
    assert local.is_relative_to(tmp_path / "third" / "cache") and local.stat().st_size > 10_000
    html = local.read_text()
    assert "Pareto front" in html and str(prune["trial_id"].iloc[0]) in html
    assert "Hyperparameter importance" in html  # the study, read from the bucket's optuna.db
    sent = sum(keys.values())
    record("driver SIGINT mid-sweep on s3:// storage, --resume by a driver with an empty disk",
           trials=len(prune), finished_before_stop=len(finished), trials_rerun=sum(
               any(k.startswith(f"interrupted/t/{n}/checkpoint_000002") for k in keys) for n in finished),
           objects_in_storage=len(keys), mb_in_storage=round(sent / 1e6, 1), resume_s=round(resume_seconds))


def test_a_sweep_rides_out_the_s3_server_going_away_mid_sweep(s3_server, s3_outage, tmp_path: Path, record):
    """The S3 server goes away for 20 s while a trial is reporting (every open connection cut, every new one
    reset) and comes back: the sweep finishes by itself, no trial errors, every evaluation is in the storage
    exactly once, the study and the trials table are complete."""
    sweep = write_sweep(tmp_path / "s.yaml", search={"num_samples": 2, "max_concurrent": 1, "seed": 0},
                        prune={"set": {"gates.mode": "learned", "train.max_steps": 200, "train.eval_every": 50}})
    results = s3_server.uri("outage")
    cmd, env = _driver([str(sweep), "--no-report", "--results", results], tmp_path / "work", tmp_path, s3_outage.env)
    proc = subprocess.Popen(cmd, cwd=tmp_path / "work", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    outage_s, deadline = 20.0, time.time() + 300
    while time.time() < deadline:  # the first trial has saved a checkpoint and is still training
        keys = s3_server.keys("outage/t")
        if any("/prune_trainable_" in k and "/checkpoint_000000/" in k for k in keys):
            break
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.2)
    else:
        pytest.fail("no trial saved a checkpoint within 300 s")
    before = len(s3_server.keys("outage"))
    s3_outage.stop()
    time.sleep(outage_s)
    met = s3_outage.reset
    alive_through_outage = proc.poll() is None
    s3_outage.start()
    out, _ = proc.communicate(timeout=900)
    assert alive_through_outage, out[-3000:]
    assert proc.returncode == 0, out[-4000:]
    assert met > 0, "no request met the outage"
    keys = s3_server.keys("outage")
    assert len(keys) > before

    df = pd.read_csv(download(results + "/t/trials.csv", tmp_path / "trials.csv"))
    prune = df[df["stage"] == "prune"]
    assert len(prune) == 2 and (prune["status"] == "completed").all(), prune[["trial_id", "status", "error"]]
    trial_names = sorted({k.split("/")[2] for k in keys if k.startswith("outage/t/prune_trainable_")})
    assert len(trial_names) == 2, trial_names
    expected, found = [50, 100, 150, 200], {}
    for name in trial_names:
        found[name] = list(pd.read_csv(download(f"{results}/t/{name}/progress.csv", tmp_path / name / "p.csv"))[M.STEP])
    lost = sum(len(set(expected) - set(steps)) for steps in found.values())
    doubled = sum(len(steps) - len(set(steps)) for steps in found.values())
    assert lost == 0 and doubled == 0 and all(steps == expected for steps in found.values()), found
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{download(results + '/t/optuna.db', tmp_path / 'o.db')}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2, [t.state for t in study.trials]
    record("S3 server gone for 20 s mid-sweep (open connections cut, new ones reset), then back",
           outage_s=outage_s, connections_reset=met, trials=len(prune),
           trials_completed=int((prune["status"] == "completed").sum()), trials_errored=int(
               (df["status"] == "error").sum()), evaluations_lost=lost, evaluations_doubled=doubled,
           study_trials_complete=len(complete))
