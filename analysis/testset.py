"""Test-set scores of a finished sweep, and the statistics that compare its methods.

    python -m analysis.testset results/multi30k_en_de          # also run by the sweep itself (test.enabled)

What is scored: the base model; in each method folder, every completed trial of a budget method (gates_budget,
importance, iterative, random: each (budget, seed) point) and of ``scratch``; of the Optuna gate trials, those on the
Pareto front **chosen on the validation split**. The test split never chooses anything: it scores what validation
chose. Each score is sacrebleu's (BLEU and chrF with their signatures), with beam search, and is kept with its
translations in ``<method folder>/test/<trial id>.json``, so a second call scores only what is new, also where the
trials' weights are gone (a sweep kept without its checkpoints) or the folder has moved.

The statistics:
- per (method, budget): the mean test BLEU over seeds and its 95% t-interval (seeds are the method's own
  randomness: the fine-tuning seed, random's layout, importance's training batches);
- per budget, among the methods fine-tuned equally long (those evaluated right after pruning apart), each
  against the reference method (gates_budget where the sweep has it): the difference of
  their seed-mean test BLEU, its 95% interval and p-value from a paired bootstrap over the test sentences
  (sacrebleu's resampling and statistics; each resample also redraws each method's seeds, so the interval carries
  the seed spread as well as the test set's). With one seed per method this is exactly sacrebleu's paired
  bootstrap test. A method "beats" another only where the interval excludes 0;
- Table 2 (Voita et al. 2019): each layout ``scratch`` trained from random initialisation against the same layout
  pruned from the trained model (the gate front trial with it; the base model for the full layout), the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from model import metrics as M
from model.checkpoint import CheckpointError
from model.cli import add_data_dir, command_parser, data_dir
from model.config import EvalConfig
from model.corpora import CorpusError
from model.files import atomic_write
from sweeps.baselines import layout_name
from sweeps.results import (
    BASE_METHOD,
    BUDGET,
    CHECKPOINT,
    LAYOUT,
    LAYOUT_SEED,
    PARAM_PREFIX,
    PRETRAIN,
    STAGE,
    STATUS,
    SWEEP_FILE,
    TEST_DIR,
    TEST_PACK_FILE,
    TEST_SCORES_FILE,
    TRIAL_ID,
    checkpoint_file,
    read_test_pack,
    references_file,
)
from sweeps.schema import (
    BUDGET_METHODS,
    GATES,
    GATES_BUDGET,
    IMPORTANCE,
    METHODS,
    SCRATCH,
    ClaimConfig,
    HeldOutTestConfig,
    method_runs,
)
from sweeps.storage import StorageError, folder_names, is_uri, join_storage, upload

from . import charts
from .load import LABEL, ResultsError, SweepResults, load_sweep, trial_gates, trial_history
from .pages import REPORT_DIR, Page, markdown_table, publish
from .pareto import pareto_front
from .stats import paired_bootstrap, sentence_stats, t_interval

TEST_BLEU, TEST_CHRF, TEST_SIGNATURE = "test_bleu", "test_chrf", "test_bleu_signature"
BUDGET_COLUMN, SEED_COLUMN = PARAM_PREFIX + BUDGET, PARAM_PREFIX + LAYOUT_SEED
ORIGIN = "origin"  # the sweep a scored row comes from: this sweep's name, or one it includes (test.include)


class ScoringError(RuntimeError):
    """A trial chosen for the test set cannot be scored (its checkpoint or the test split is missing)."""


# --------------------------------------------------------------------------------------------------
# Scoring


def method_folders(s: SweepResults) -> list[tuple[str, str, str, int]]:
    """(method, label, folder or URI, fine-tuning steps) of every method folder of the sweep that ``s`` (any of its
    method folders) belongs to, in the order they run, from its recorded sweep (``sweep.json``); only those that
    exist. Locally that is every method's folder beside it, also of methods an earlier ``--resume`` part ran and
    the last one did not name; in remote storage, the recorded methods'."""
    record = s.config
    if not record.get("name"):
        return [("gates", s.label, s.source, 0)]
    methods = record.get("method") or "gates"
    methods = [methods] if isinstance(methods, str) else list(methods)
    runs = method_runs(record["name"], methods if s.remote else list(METHODS),
                       list((record.get("baselines") or {}).get("finetune_steps") or [0]))
    parent = _parent(s)
    out = []
    for run in runs:
        folder = join_storage(parent, run.name) if s.remote else str(Path(parent) / run.name)
        if s.remote or (Path(folder) / SWEEP_FILE).is_file():  # a gate folder holding only W&B's runs is none
            out.append((run.method, run.label, folder, run.finetune_steps))
    return out


def _parent(s: SweepResults) -> str:
    """The results root a sweep folder lies in."""
    return s.source.rsplit("/", 1)[0] if s.remote else str(Path(s.source).parent)


def sweep_folder(root: str, name: str) -> SweepResults:
    """The first of the method folders of the sweep called ``name`` in the results root ``root`` (a local folder
    or a URI), in the order they run: its gate folder where it has one. A sweep of some methods only (``method:
    [importance]``) has no gate folder; its comparison lies in the first folder it has."""
    names = [n for n in folder_names(root) if n == name or n.startswith(name + "-")]
    for folder in [name, *sorted(n for n in names if n != name)]:
        if folder not in names:
            continue
        try:
            s = load_sweep(join_storage(root, folder))
        except ResultsError:
            continue
        if s.config.get("name") == name:
            first = method_folders(s)[0][2]
            return s if first == s.source else load_sweep(first)
    raise ResultsError(f"{join_storage(root, name)}: no method folder of a sweep called {name!r} in {root} "
                       f"(found {', '.join(names) or 'none'})")


def chosen_for_test(s: SweepResults, method: str) -> tuple[pd.DataFrame, str]:
    """The rows of one method folder that the test set scores, and what chose them: every completed trial of a
    budget method or of scratch ("all"); of the gate trials, the validation Pareto front of the folder's
    objectives ("validation front")."""
    done = s.completed
    if method in BUDGET_METHODS or method == SCRATCH:
        return done, "all"
    return (done if done.empty else pareto_front(done, s.objectives, s.directions)), "validation front"


def _fingerprint(values: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(values).encode()).hexdigest()[:16]


def checkpoint_key(checkpoint: str) -> str:
    """What a cached test score is keyed by: a trial's checkpoint folder by its last two parts (``<trial
    folder>/checkpoint_<n>``), so that a sweep folder read from another place (a copy on another machine, a clone of
    a repository that keeps a sweep's results without its weights, a bucket's local mirror) keeps its cached scores;
    a base model given as a file, by its path."""
    given = str(checkpoint).replace("\\", "/").rstrip("/")
    return given if given.endswith(".pt") else "/".join(given.split("/")[-2:])


TEST = HeldOutTestConfig()  # the schema's test-set settings: every default below is one of them


def held_out_settings(config: dict[str, Any]) -> HeldOutTestConfig:
    """A sweep's test-set settings (``test`` in its sweep.json), the schema's defaults where it names none."""
    given = dict(config.get("test") or {})
    given["claims"] = [c if isinstance(c, ClaimConfig) else ClaimConfig(**c) for c in given.get("claims") or []]
    return HeldOutTestConfig(**{f.name: given[f.name] for f in dataclasses.fields(HeldOutTestConfig)
                                if f.name in given})


MODEL_HEADS = "model_heads"  # in a base model's cached score: heads per layer of each attention type


def cached_score(folder: Path, trial: str) -> dict[str, Any] | None:
    """A trial's cached test score in ``folder``: its own file (``<trial>.json``, or compressed), else its line in a
    record's pack (sweeps.record), the references put back from the file a record keeps them in once; None where
    there is none or it cannot be read (the trial is scored again). A record whose references file is missing is an
    error: its trials cannot be scored again without their weights."""
    cache = folder / f"{trial}.json"
    kept = cache.with_name(cache.name + ".gz")  # compressed in a record made before the pack
    pack = folder / TEST_PACK_FILE
    try:
        if cache.exists() or kept.exists():
            where = cache if cache.exists() else kept
            found = json.loads(cache.read_bytes() if cache.exists() else gzip.decompress(kept.read_bytes()))
        else:
            where = pack
            stat = pack.stat() if pack.is_file() else None
            packed = _test_pack(str(pack), stat.st_mtime_ns, stat.st_size) if stat else {}
            found = dict(packed[trial]) if trial in packed else None
    except (OSError, EOFError, gzip.BadGzipFile, json.JSONDecodeError, UnicodeDecodeError):
        return None  # a damaged cache file: scored again
    if found is not None and "references" not in found and "references_sha256" in found:
        shared = references_file(folder, str(found["references_sha256"]))
        try:
            found["references"] = json.loads(gzip.decompress(shared.read_bytes()).decode("utf-8"))
        except (OSError, EOFError, gzip.BadGzipFile, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ScoringError(f"{where}: the reference translations of trial {trial} are kept in {shared}, which "
                               f"cannot be read ({exc})") from None
    return found


@functools.lru_cache(maxsize=32)
def _test_pack(path: str, mtime_ns: int, size: int) -> dict[str, dict[str, Any]]:
    return dict(read_test_pack(Path(path)))


def score_row(row: pd.Series, folder: Path, beam: int, batch_size: int, split: str = "test", device: str = "cpu",
              corpus_dir: str | None = None, log: Callable[[str], None] = print,
              max_sentences: int | None = None) -> dict[str, Any]:
    """The test score of one trial (or base model), from its cached file in ``folder`` when it scored the same
    checkpoint with the same settings, else by translating the split now and caching the result."""
    from model.evaluate import evaluate_checkpoint

    trial = str(row[TRIAL_ID])
    cache = folder / f"{trial}.json"
    settings = {"checkpoint": str(row[CHECKPOINT]), "split": split, "beam": beam, "max_sentences": max_sentences}
    found = cached_score(folder, trial)
    if found is not None:
        same = checkpoint_key(found.get("checkpoint", "")) == checkpoint_key(settings["checkpoint"])
        if same and all(found.get(k) == v for k, v in settings.items() if k != "checkpoint"):
            if settings["checkpoint"].endswith(".pt") and MODEL_HEADS not in found:  # cached before the key
                found[MODEL_HEADS] = model_heads(settings["checkpoint"])
                if found[MODEL_HEADS] is not None:
                    atomic_write(cache, json.dumps(found, ensure_ascii=False) + "\n")
            return found
    try:
        given = str(row[CHECKPOINT])
        path = given if given.endswith(".pt") else checkpoint_file(given)  # a base given as a file, or a folder
        settings_now = EvalConfig(split=split, beam_size=beam, batch_size=batch_size, max_sentences=max_sentences)
        scores, _, refs, hyps = evaluate_checkpoint(str(path), split, settings_now, device, log=lambda m: None,
                                                    data_dir=corpus_dir)
    except (CheckpointError, CorpusError, StorageError, OSError) as exc:
        raise ScoringError(f"trial {trial}: {exc}") from None
    record = {**settings, TRIAL_ID: trial, "bleu": scores.bleu, "chrf": scores.chrf,
              "bleu_signature": scores.bleu_signature, "chrf_signature": scores.chrf_signature,
              "sentences": len(hyps), "references_sha256": _fingerprint(refs), "hypotheses": hyps,
              "references": refs}
    if given.endswith(".pt"):  # a base given as a file: its heads stay known where its weights are not kept
        record[MODEL_HEADS] = model_heads(given)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(cache, json.dumps(record, ensure_ascii=False) + "\n")
    log(f"  {trial}: test BLEU {scores.bleu:.2f} ({len(hyps)} sentences, beam {beam})")
    return record


@dataclass
class HeldOutScores:
    """Every scored row of a sweep (one DataFrame) and each scored system's sentence statistics."""

    table: pd.DataFrame  # method, label, trial_id, heads, budget, seed, val bleu, test bleu/chrF, signature
    stats: dict[tuple[str, str], np.ndarray]  # (label, trial_id) -> sentence_stats
    heads: str  # the heads objective the chart uses (e.g. open_heads/enc_self)
    origin: str = ""  # the sweep's name: its rows' ORIGIN where it includes other sweeps' rows (test.include)


def _model_config(path: str):
    """The model config a plain checkpoint file was saved with, read once per version of the file (a base model
    given as a file is asked for its heads and its layout)."""
    try:
        st = Path(path).stat()
    except OSError:
        return _read_model_config.__wrapped__(path, 0, 0)  # not there: load_checkpoint's error names it
    return _read_model_config(path, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _read_model_config(path: str, mtime_ns: int, size: int):
    from model.checkpoint import checkpoint_config, load_checkpoint

    return checkpoint_config(load_checkpoint(path)).model


def model_heads(path: str) -> dict[str, list[int]] | None:
    """Heads per layer of every attention type of a plain checkpoint (a base model given as a file, or a checkpoint
    folder), from its config; None where the weights are gone."""
    try:
        m = _model_config(path if path.endswith(".pt") else str(checkpoint_file(path)))
    except (CheckpointError, OSError):
        return None
    return {k: list((m.heads or {}).get(k) or [m.n_heads] * m.layers(k)) for k in ("enc_self", "dec_self", "dec_cross")}


def _heads_of(per_layer: dict[str, list[int]], metric: str) -> int:
    """The heads of the attention type ``metric`` names (all types for open_heads)."""
    kinds = [metric.split("/")[1]] if "/" in metric else list(per_layer)
    return sum(sum(per_layer[kind]) for kind in kinds)


def gated_kinds(s: SweepResults) -> list[str]:
    """The attention types the sweep's gates prune (its prune.set's gates.attention; the config's default)."""
    kinds = ((s.config.get("prune") or {}).get("set") or {}).get("gates.attention")
    if kinds is None:
        from model.config import GateConfig

        kinds = GateConfig().attention
    return [kinds] if isinstance(kinds, str) else list(kinds)


def row_layout(row: pd.Series, kinds: Sequence[str]) -> str | None:
    """The layout name (``enc_self=4,0,2``, as scratch's layouts) of a trials-table row's per-layer open-head
    columns; None where a column is missing."""
    heads = {}
    for kind in kinds:
        counts, layer = [], 0
        while (key := M.open_heads_layer_key(kind, layer)) in row.index:
            if pd.isna(row[key]):
                return None
            counts.append(int(row[key]))
            layer += 1
        if not counts:
            return None
        heads[kind] = counts
    return layout_name(heads) if heads else None


def _heads_metric(s: SweepResults) -> str:
    return next((o for o in s.objectives if o.startswith(M.OPEN_HEADS)), M.OPEN_HEADS)


def score_sweep(folder: str | Path, beam: int = TEST.beam_size, batch_size: int = TEST.batch_size,
                device: str = "cpu", corpus_dir: str | None = None, log: Callable[[str], None] = print,
                max_sentences: int | None = None, include: Sequence[str] | None = None
                ) -> tuple[SweepResults, HeldOutScores]:
    """Score every chosen trial of every method folder of a sweep on its test split (see the module's doc); write
    ``test_scores.csv`` into each folder (uploaded beside a sweep in remote storage).

    ``folder`` is any of the sweep's method folders; the first one it has in the order methods run (its gate
    folder where it has one) is returned: the comparison's place. ``include`` (default: the sweep's
    ``test.include``) names other sweeps in the same results root whose fine-tuned budget methods and gate front
    join as their own rows (``<label> [<name>]``), scored with the same beam; they must have fine-tuned the same
    base model."""
    given = load_sweep(folder)
    folders = method_folders(given)
    if not folders:
        raise ResultsError(f"{given.source}: its sweep.json names the sweep {given.config.get('name')!r}, but no "
                           f"folder of that sweep lies beside it (a method folder keeps its sweep's name: "
                           f"<name>, <name>-<method>...)")
    first = given if folders[0][2] == given.source else load_sweep(folders[0][2])
    include = held_out_settings(first.config).include if include is None else list(include)
    own = first.config.get("name") or first.label
    table = _Scoring(beam, batch_size, device, corpus_dir, log, max_sentences, _heads_metric(first), gated_kinds(first))
    base = table.score_folders(first, folders, own)
    for name in [n for n in include if n != own]:  # a twin run under another name shares the list
        try:
            other = sweep_folder(_parent(first), name)
        except ResultsError as exc:  # not run (yet) in this results root: the comparison goes on without it
            log(f"test set: test.include {name}: left out ({exc})")
            continue
        other_folders = [(method, label, folder, steps) for method, label, folder, steps in method_folders(other)
                         if method in (GATES, GATES_BUDGET) or (method in BUDGET_METHODS and steps)]
        other_base = table.score_folders(other, other_folders, name, suffix=f" [{name}]")
        if other_base != base:
            raise ScoringError(f"test.include: {other.source} fine-tuned another base model than {first.source} (their "
                               f"base models translate the test split differently), so its rows cannot be compared "
                               f"with this sweep's pair by pair")
    if len(table.refs_seen) > 1:
        raise ScoringError(f"the method folders of {first.source} were scored against {len(table.refs_seen)} "
                           f"different test sets; every method must share one")
    df = pd.DataFrame(table.rows)
    if include:
        df[ORIGIN] = df[ORIGIN].fillna(own) if ORIGIN in df else own
    return first, HeldOutScores(df, table.stats, table.heads, own)


@dataclass
class _Scoring:
    """The test scores of one comparison, gathered folder by folder."""

    beam: int
    batch_size: int
    device: str
    corpus_dir: str | None
    log: Callable[[str], None]
    max_sentences: int | None
    heads: str
    kinds: list[str]
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    stats: dict[tuple[str, str], np.ndarray] = dataclasses.field(default_factory=dict)
    refs_seen: set[str] = dataclasses.field(default_factory=set)

    def score_folders(self, first: SweepResults, folders: list[tuple[str, str, str, int]], sweep: str,
                      suffix: str = "") -> str | None:
        """Score the chosen rows of each folder of one sweep (its base models with the first folder's; an included
        sweep's apart from the table, to be compared); returns the fingerprint of its base model's translations."""
        base = None
        for index, (method, label, folder, steps) in enumerate(folders):
            label += suffix
            try:
                s = first if folder == first.source else load_sweep(folder, label)
            except ResultsError as exc:  # a method's folder made by a sweep part that has not reported yet
                self.log(f"test set: {label}: left out ({exc})")
                continue
            chosen, chosen_on = chosen_for_test(s, method)
            if index and chosen.empty:
                self.log(f"test set: {label}: left out (no finished trial in {folder})")
                continue
            folder_rows = []
            if index == 0:  # the base model(s), scored once: trained by the sweep, or given as a file
                given = (s.config.get("pretrain") or {}).get("checkpoint")
                bases = s.bases if not s.bases.empty or not given else pd.DataFrame(
                    [{TRIAL_ID: "base", STAGE: PRETRAIN, CHECKPOINT: given, STATUS: M.COMPLETED}])
                for _, row in bases.iterrows():
                    found = self._score(row, s)
                    base = _fingerprint(found["hypotheses"])
                    if not suffix:
                        folder_rows.append(self._base_entry(row, found))
            self.log(f"test set: {label}: {len(chosen)} trial{'s' * (len(chosen) != 1)}")
            for _, row in chosen.iterrows():
                found = self._score(row, s)
                layout = row.get(PARAM_PREFIX + LAYOUT)
                if method in (GATES, GATES_BUDGET):  # the heads each layer kept (Table 2 matches gates' layouts)
                    layout = row_layout(row, self.kinds) or layout
                folder_rows.append(self._entry(row, found, method, label, chosen_on,
                                               steps if method in BUDGET_METHODS else math.nan, layout))
            for entry in folder_rows if suffix else []:
                entry[ORIGIN] = sweep
            self.rows += folder_rows
            atomic_write(s.path / TEST_SCORES_FILE, pd.DataFrame(folder_rows).to_csv(index=False))
            if s.remote:
                upload(s.path / TEST_SCORES_FILE, join_storage(s.source, TEST_SCORES_FILE))
                upload(s.path / TEST_DIR, join_storage(s.source, TEST_DIR))
        return base

    def _score(self, row: pd.Series, s: SweepResults) -> dict[str, Any]:
        found = score_row(row, s.path / TEST_DIR, self.beam, self.batch_size, device=self.device,
                          corpus_dir=self.corpus_dir, log=self.log, max_sentences=self.max_sentences)
        self.refs_seen.add(found["references_sha256"])
        return found

    def _base_entry(self, row: pd.Series, found: dict[str, Any]) -> dict[str, Any]:
        """A base model's row: its heads from its cached score (a file) or its checkpoint."""
        count = row.get(self.heads)
        per_layer = found.get(MODEL_HEADS) or model_heads(str(row[CHECKPOINT]))
        if count is None or pd.isna(count):
            if per_layer is None:
                raise ScoringError(f"base model {row[CHECKPOINT]}: no score cached with its heads and no weights to "
                                   f"read them from")
            count = _heads_of(per_layer, self.heads)
        layout = row_layout(row, self.kinds) or (layout_name({k: per_layer[k] for k in self.kinds}) if per_layer
                                                 else None)
        entry = self._entry(row, found, "base", "base model", "", math.nan, layout)
        entry["heads"] = float(count)
        return entry

    def _entry(self, row: pd.Series, found: dict[str, Any], method: str, label: str, chosen_on: str,
               steps: float, layout: str | None) -> dict[str, Any]:
        heads = row.get(self.heads)
        entry = {"method": method, LABEL: label, TRIAL_ID: str(row[TRIAL_ID]),
                 "heads": math.nan if heads is None or pd.isna(heads) else float(heads),
                 "budget": row.get(BUDGET_COLUMN), "seed": row.get(SEED_COLUMN), "chosen_on": chosen_on,
                 "finetune_steps": steps, M.BLEU: row.get(M.BLEU), TEST_BLEU: found["bleu"],
                 TEST_CHRF: found["chrf"], TEST_SIGNATURE: found["bleu_signature"], "sentences": found["sentences"],
                 "layout": layout}
        speed = row.get(M.SPEEDUP)
        if speed is not None and not pd.isna(speed):  # latency.enabled: the trial's pruned model against its base
            entry[M.SPEEDUP] = float(speed)
        self.stats[(label, entry[TRIAL_ID])] = sentence_stats(found["hypotheses"], found["references"])
        return entry


# --------------------------------------------------------------------------------------------------
# The comparison


POINT_COLUMNS = [LABEL, "method", "finetune_steps", "point", "heads", "seeds", "test_bleu_mean", "ci95", "test_bleu_sd",
                 "val_bleu_mean"]


def point_table(scores: HeldOutScores) -> pd.DataFrame:
    """Mean test BLEU and its 95% interval per (method, budget) of the budget methods, and per layout of scratch."""
    df = scores.table
    out = []
    for (label, method), group in df[df["method"].isin([*BUDGET_METHODS, SCRATCH])].groupby([LABEL, "method"],
                                                                                          sort=False):
        key = "layout" if method == SCRATCH else "budget"
        for point, runs in group.groupby(key, sort=True):
            mean, half = t_interval(runs[TEST_BLEU].tolist())
            val_mean, _ = t_interval(runs[M.BLEU].astype(float).tolist())
            steps = runs["finetune_steps"].iloc[0] if "finetune_steps" in runs else math.nan
            out.append({LABEL: label, "method": method, "finetune_steps": steps, "point": point,
                        "heads": float(runs["heads"].mean()), "seeds": len(runs), "test_bleu_mean": mean, "ci95": half,
                        "test_bleu_sd": float(runs[TEST_BLEU].std(ddof=1)) if len(runs) > 1 else math.nan,
                        "val_bleu_mean": val_mean, ORIGIN: runs[ORIGIN].iloc[0] if ORIGIN in runs else "",
                        M.SPEEDUP: float(runs[M.SPEEDUP].mean()) if M.SPEEDUP in runs else math.nan})
    columns = POINT_COLUMNS + ([ORIGIN] if ORIGIN in df else []) + ([M.SPEEDUP] if M.SPEEDUP in df else [])
    return pd.DataFrame(out, columns=columns)  # the columns also when no folder has points (gates alone)


def own_rows(scores: HeldOutScores) -> pd.DataFrame:
    """The rows of the sweep itself, without those of the sweeps it includes (test.include)."""
    table = scores.table
    return table[table[ORIGIN] == scores.origin] if ORIGIN in table else table


def comparisons(scores: HeldOutScores, samples: int = TEST.bootstrap) -> pd.DataFrame:
    """Among the budget methods fine-tuned the same number of steps (equal training: the methods evaluated right
    after pruning apart from those fine-tuned), at every budget both have: gates_budget against each layout method
    (the question the sweep asks), then importance against the other layout methods (the informed choice against
    iterative re-scoring and against chance); paired bootstrap over test sentences with the seeds of each. The
    sweep's own rows only: :func:`included_comparisons` sets them against the sweeps it includes."""
    table = own_rows(scores)
    budget_rows = table[table["method"].isin(BUDGET_METHODS)]
    out = []
    groups = budget_rows.groupby(budget_rows["finetune_steps"].fillna(0))
    for steps, df in sorted(groups, key=lambda group: -group[0]):  # the longest fine-tuning (every method's) first
        out += _compare_group(df, int(steps), scores, samples)
    return pd.DataFrame(out)


def included_comparisons(scores: HeldOutScores, samples: int = TEST.bootstrap) -> pd.DataFrame:
    """Each budget method of the sweep against the same method of every sweep it includes (test.include), at
    every budget both have: what the sweep's recipe (distillation, the number of steps, the constraint) changed,
    paired over the same test sentences, each side's seeds redrawn."""
    table = scores.table
    if ORIGIN not in table:
        return pd.DataFrame()
    own = own_rows(scores)
    others = table[~table.index.isin(own.index) & table["method"].isin(BUDGET_METHODS)]
    out = []
    for (label_a, method), a in own[own["method"].isin(BUDGET_METHODS)].groupby([LABEL, "method"], sort=False):
        for label_b, b in others[others["method"] == method].groupby(LABEL, sort=False):
            for budget in sorted(set(a["budget"]) & set(b["budget"])):
                def systems(df: pd.DataFrame, label: str, budget=budget) -> list[np.ndarray]:
                    runs = df[df["budget"] == budget].sort_values("seed")
                    return [scores.stats[(label, t)] for t in runs[TRIAL_ID]]

                c = paired_bootstrap(systems(a, label_a), systems(b, label_b), samples)
                out.append({"budget": int(budget), "A": label_a, "B": label_b,
                            "steps A": int(a["finetune_steps"].iloc[0]), "steps B": int(b["finetune_steps"].iloc[0]),
                            "seeds A": c.seeds_a, "seeds B": c.seeds_b, "BLEU A": c.bleu_a, "BLEU B": c.bleu_b,
                            "A - B": c.difference, "95% low": c.low, "95% high": c.high, "p": c.p_value,
                            "verdict": c.verdict})
    return pd.DataFrame(out)


def claim_table(scores: HeldOutScores, claims: Sequence[ClaimConfig], samples: int = TEST.bootstrap) -> pd.DataFrame:
    """The sweep's stated targets (test.claims), each at every budget both of its methods ran in this sweep,
    fine-tuned equally long (the longest both have): the paired bootstrap of ``method`` against ``against`` and
    whether the claim holds there ('met' or 'missed'); a method the sweep has not run gives one 'not run' row."""
    table = own_rows(scores)
    out = []
    for claim in claims:
        wording = "at least matches on the mean" if claim.by == "mean" else "beats it (interval above 0)"
        row = {"claim": f"{claim.method} against {claim.against}: {wording}"}
        a, b = (table[table["method"] == m] for m in (claim.method, claim.against))
        shared = (set(a["finetune_steps"].fillna(0)) & set(b["finetune_steps"].fillna(0))) if len(a) and len(b) else ()
        if not shared:
            out.append({**row, "verdict": "not run"})
            continue
        steps = max(shared)
        a, b = (df[df["finetune_steps"].fillna(0) == steps] for df in (a, b))
        budgets = sorted(set(a["budget"]) & set(b["budget"]))
        if not budgets:
            out.append({**row, "verdict": "not run"})
            continue
        for budget in budgets:
            def systems(df: pd.DataFrame, budget=budget) -> list[np.ndarray]:
                runs = df[df["budget"] == budget].sort_values("seed")
                return [scores.stats[(lab, t)] for lab, t in zip(runs[LABEL], runs[TRIAL_ID])]

            c = paired_bootstrap(systems(a), systems(b), samples)
            held = c.difference >= 0 if claim.by == "mean" else c.low > 0
            out.append({**row, "fine-tuning steps": int(steps), "budget": int(budget), "seeds A": c.seeds_a,
                        "seeds B": c.seeds_b, "BLEU A": c.bleu_a, "BLEU B": c.bleu_b, "A - B": c.difference,
                        "95% low": c.low, "95% high": c.high, "p": c.p_value, "verdict": "met" if held else "missed"})
    df = pd.DataFrame(out)
    return df.astype({c: "Int64" for c in ("fine-tuning steps", "budget", "seeds A", "seeds B") if c in df})


def _claim_lines(claims: pd.DataFrame) -> list[str]:
    """One sentence per claim: met at every budget, or where it is missed, with each budget's interval."""
    lines = []
    for claim, g in claims.groupby("claim", sort=False):
        if (g["verdict"] == "not run").all():
            lines.append(f"- {claim}: not run (the sweep has no scored trials of both at equal fine-tuning).")
            continue
        at = "; ".join(f"{r['budget']:g} heads {r['A - B']:+.2f} ({r['95% low']:.2f} to {r['95% high']:.2f})"
                       for _, r in g.iterrows())
        missed = g[g["verdict"] == "missed"]["budget"].tolist()
        verdict = "met at every budget" if not missed else f"missed at {', '.join(f'{b:g}' for b in missed)} heads"
        lines.append(f"- {claim}: **{verdict}**. A - B and its 95% interval: {at}.")
    return lines


def _compare_group(df: pd.DataFrame, steps: int, scores: HeldOutScores, samples: int) -> list[dict[str, Any]]:
    labels = list(dict.fromkeys(df[LABEL]))

    def first(method: str) -> list[str]:
        return [lab for lab in labels if (df[df[LABEL] == lab]["method"] == method).all()][:1]

    references = first(GATES_BUDGET) + first(IMPORTANCE) or labels[:1]
    pairs = [(ref, other) for i, ref in enumerate(references) for other in labels if other not in references[:i + 1]]
    out = []
    for reference, other in pairs:
        for budget in sorted(set(df[df[LABEL] == reference]["budget"]) & set(df[df[LABEL] == other]["budget"])):
            def systems(label: str, budget=budget) -> list[np.ndarray]:
                runs = df[(df[LABEL] == label) & (df["budget"] == budget)].sort_values("seed")
                return [scores.stats[(label, t)] for t in runs[TRIAL_ID]]

            c = paired_bootstrap(systems(reference), systems(other), samples)
            out.append({"fine-tuning steps": steps, "budget": int(budget), "A": reference, "B": other,
                        "seeds A": c.seeds_a, "seeds B": c.seeds_b,
                        "BLEU A": c.bleu_a, "BLEU B": c.bleu_b, "A - B": c.difference, "95% low": c.low,
                        "95% high": c.high, "p": c.p_value, "verdict": c.verdict})
    return out


def table_two(scores: HeldOutScores, samples: int = TEST.bootstrap) -> pd.DataFrame:
    """Voita et al.'s Table 2: each layout scratch trained (from random initialisation, as long as the base model)
    against the same layout pruned from the trained model: the gate front trial with that layout (the best on
    validation if several), or for the full layout the trained base model itself. Paired bootstrap over test
    sentences, the scratch seeds redrawn in each resample."""
    df = own_rows(scores)
    scratch = df[df["method"] == SCRATCH]
    if scratch.empty:
        return pd.DataFrame()
    pruned = df[df["method"].isin([BASE_METHOD, GATES])]
    out = []
    for (label, layout), runs in scratch.groupby([LABEL, "layout"], sort=False):
        match = pruned[pruned["layout"] == layout]
        base = match[match["method"] == "base"]
        if base.empty and not match.empty:
            match = match.loc[[match[M.BLEU].astype(float).idxmax()]]  # chosen on validation
        else:
            match = base
        mean, half = t_interval(runs[TEST_BLEU].tolist())
        row = {"layout": layout, "heads": float(runs["heads"].mean()),
               "pruned from trained": "" if match.empty else
               ("base model" if match["method"].iloc[0] == "base" else f"gates {match[TRIAL_ID].iloc[0]}"),
               "BLEU pruned": float(match[TEST_BLEU].iloc[0]) if not match.empty else math.nan,
               "scratch seeds": len(runs), "BLEU scratch": mean, "scratch ci95": half}
        if not match.empty:
            m = match.iloc[0]
            c = paired_bootstrap([scores.stats[(m[LABEL], m[TRIAL_ID])]],
                                 [scores.stats[(label, t)] for t in runs.sort_values("seed")[TRIAL_ID]], samples)
            row.update({"pruned - scratch": c.difference, "95% low": c.low, "95% high": c.high, "p": c.p_value,
                        "verdict": {"A better": "pruned better", "B better": "scratch better"}.get(c.verdict,
                                                                                                  c.verdict)})
        else:
            row["verdict"] = "no pruned model with this layout"
        out.append(row)
    return pd.DataFrame(out).sort_values("heads", kind="stable").reset_index(drop=True)


def settled_steps(s: SweepResults, heads: str) -> pd.DataFrame:
    """Per completed gate trial: the first evaluation step from which its head count no longer changed, and the
    run's last step (how long fine-tuning needs before lambda, not the step count, decides the heads)."""
    out = []
    for _, row in s.completed.iterrows():
        try:
            history = trial_history(row)
        except ResultsError:
            continue
        if heads not in history.columns or history.empty:
            continue
        counts, steps = history[heads].tolist(), history[M.STEP].tolist()
        settled = steps[0]
        for i in range(1, len(counts)):
            if counts[i] != counts[i - 1]:
                settled = steps[i]
        out.append({TRIAL_ID: row[TRIAL_ID], "settled_step": settled, "last_step": steps[-1],
                    "final_heads": counts[-1]})
    return pd.DataFrame(out)


def kept_settled(s: SweepResults) -> pd.DataFrame:
    """Per completed trial of a gates_budget folder: the first evaluation step from which the heads its budget
    keeps (the top-k, ``kept`` in gates.jsonl) never changed again, its last step and the heads kept at the end
    (``<group>:<head>``). Trials logged without ``kept`` are left out."""
    from .prune_length import settled_step

    out = []
    for _, row in s.completed.iterrows():
        try:
            records = trial_gates(row)
        except ResultsError:
            continue
        kept = [(r[M.STEP], {f"{group}:{i}" for group, heads in r["kept"].items() for i in heads})
                for r in records if "kept" in r]
        if kept:
            out.append({TRIAL_ID: row[TRIAL_ID], "budget": row.get(BUDGET_COLUMN), "seed": row.get(SEED_COLUMN),
                        "settled_step": settled_step(kept), "last_step": kept[-1][0],
                        "kept": " ".join(sorted(kept[-1][1], key=lambda h: (h.split(":")[0], int(h.split(":")[1]))))})
    return pd.DataFrame(out)


def target_table(scores: HeldOutScores, points: pd.DataFrame, removed: float = 0.75, tolerance: float = 0.5,
                 total_heads: int | None = None) -> tuple[pd.DataFrame, float]:
    """Per method: the fewest heads whose mean test BLEU is within ``tolerance`` of the base model's, the fewest
    whose 95% interval lies wholly above that line (not the same point where the fewest heads' interval is wide),
    and whether at least ``removed`` of the heads go: 'met (interval)' where a point with few enough heads clears
    the line with its interval, 'met (mean)' where one does only on its mean, else 'missed'. The budget methods
    by their points, the gate trials by their front, scratch by its layouts (each trained without the heads it
    lacks: the same question asked of a model that never had them). A single run (a gate front trial) has no
    interval. Returns the table and the base model's test BLEU."""
    base = scores.table[scores.table["method"] == "base"]
    if base.empty:
        return pd.DataFrame(), math.nan
    base_bleu = float(base[TEST_BLEU].iloc[0])
    total = total_heads or int(base["heads"].iloc[0])
    line, limit = base_bleu - tolerance, (1 - removed) * total
    rows = []
    gates = scores.table[scores.table["method"] == GATES]
    candidates = [(lab, g["heads"].astype(float), g[TEST_BLEU], g[TEST_BLEU] * np.nan)
                  for lab, g in gates.groupby(LABEL)]
    for lab, g in points[points["method"].isin([*BUDGET_METHODS, SCRATCH])].groupby(LABEL, sort=False):
        candidates.append((lab, g["heads"], g["test_bleu_mean"], g["test_bleu_mean"] - g["ci95"]))
    for lab, heads, bleu, low in candidates:
        ok, clear = bleu >= line, low >= line
        best = bleu.idxmax()
        row = {LABEL: lab, "fewest heads within tolerance": "none", "test BLEU there": math.nan,
               "fewest heads, interval above the line": "none" if low.notna().any() else math.nan,
               "best test BLEU (heads)": f"{bleu[best]:.2f} ({heads[best]:g})", "target": "missed"}
        if ok.any():
            fewest = float(heads[ok].min())
            row.update({"fewest heads within tolerance": f"{fewest:g}",
                        "test BLEU there": float(bleu[ok & (heads == fewest)].max())})
            fewest_clear = float(heads[clear].min()) if clear.any() else math.inf
            if clear.any():
                row["fewest heads, interval above the line"] = f"{fewest_clear:g}"
            if fewest_clear <= limit:
                row["target"] = "met (interval)"
            elif fewest <= limit:
                row["target"] = "met (mean)"
        rows.append(row)
    return pd.DataFrame(rows), base_bleu


def comparison_chart(scores: HeldOutScores, points: pd.DataFrame, base_bleu: float, tolerance: float):
    """Test BLEU against heads: budget methods as mean ± 95% interval over seeds (a colour per method; dashed with
    open markers where evaluated right after pruning; side by side at a budget so the intervals stay apart), gate
    front trials as black squares, scratch layouts as diamonds, the base model and the tolerance line."""
    import plotly.graph_objects as go

    fig, ax = charts.figure_axes(figsize=(8, 5))
    pfig = go.Figure()
    colours = {m: f"C{i}" for i, m in enumerate([*BUDGET_METHODS, SCRATCH])}
    plotly_colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]  # matplotlib's C0..C5
    groups = list(points.groupby(LABEL, sort=False))
    # the methods at a budget spread over half the gap to the next budget, so that their intervals stay apart
    width = 0.5 * (float(np.diff(np.unique(points["heads"])).min()) if points["heads"].nunique() > 1 else 1.0)
    for index, (label, g) in enumerate(groups):
        g = g.sort_values("heads")
        x = g["heads"] + (index - (len(groups) - 1) / 2) * width / max(1, len(groups))  # dodged
        err = g["ci95"].fillna(0)
        method = g["method"].iloc[0]
        colour = colours.get(method, "C5")
        scratch = method == SCRATCH
        untuned = method != GATES_BUDGET and not (g["finetune_steps"].fillna(0) > 0).any()
        included = ORIGIN in g and g[ORIGIN].iloc[0] != scores.origin  # another sweep's (test.include): dotted
        marker = "D" if scratch else ("s" if included else "o")
        ax.errorbar(x, g["test_bleu_mean"], yerr=err, marker=marker, capsize=3, label=label, color=colour,
                    linestyle="" if scratch else (":" if included else ("--" if untuned else "-")),
                    markerfacecolor="white" if (untuned or included) and not scratch else colour)
        pfig.add_trace(go.Scatter(x=x, y=g["test_bleu_mean"], name=label,
                                  mode="markers" if scratch else "lines+markers",
                                  line={"color": plotly_colours[int(colour[1:])],
                                        "dash": "dot" if included else ("dash" if untuned and not scratch else "solid")},
                                  marker={"symbol": "diamond" if scratch else ("square-open" if included else
                                                                               ("circle-open" if untuned else "circle"))},
                                  error_y={"type": "data", "array": err.tolist()},
                                  text=[f"{label}: {p} ({n} seeds)" for p, n in zip(g["point"], g["seeds"])]))
    gates = scores.table[scores.table["method"] == GATES]
    for label, g in gates.groupby(LABEL):
        shade = "grey" if ORIGIN in g and g[ORIGIN].iloc[0] != scores.origin else "black"  # an included sweep's
        ax.scatter(g["heads"], g[TEST_BLEU], marker="s", color=shade, label=f"{label} (validation front)", zorder=3)
        pfig.add_trace(go.Scatter(x=g["heads"], y=g[TEST_BLEU], mode="markers", name=f"{label} (validation front)",
                                  marker={"symbol": "square", "color": shade}, text=g[TRIAL_ID]))
    if math.isfinite(base_bleu):
        for y, style, name in ((base_bleu, "-", "base model"), (base_bleu - tolerance, ":", f"base - {tolerance}")):
            ax.axhline(y, color="grey", linestyle=style, linewidth=1, label=name)
            pfig.add_hline(y=y, line_dash="dot" if style == ":" else "solid", line_color="grey", annotation_text=name)
    ax.set_xlabel(f"{scores.heads} (kept)")
    ax.set_ylabel("test BLEU (beam search)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    pfig.update_layout(xaxis_title=f"{scores.heads} (kept)", yaxis_title="test BLEU (beam search)",
                       title="Test BLEU against heads kept: mean and 95% interval over seeds")
    return fig, pfig


def _verdict_line(r: pd.Series, what: str, a: str, b: str) -> str:
    """One comparison in words: which side is better by how much, with the interval of better - worse; or that
    the interval includes 0."""
    if r["verdict"] == "not resolved":
        return (f"- At {r['budget']} heads, {what}: not resolved ({r['A - B']:+.2f} BLEU, 95% interval "
                f"{r['95% low']:.2f} to {r['95% high']:.2f}).")
    a_won = r["verdict"] == "A better"
    low, high = (r["95% low"], r["95% high"]) if a_won else (-r["95% high"], -r["95% low"])
    return (f"- At {r['budget']} heads, {what}: {a if a_won else b} better by {abs(r['A - B']):.2f} BLEU (95% "
            f"interval {low:.2f} to {high:.2f}, p = {r['p']:.3f}).")


def _markdown(df: pd.DataFrame) -> str:

    return markdown_table(df) if not df.empty else "(none)"


def comparison_report(gates: SweepResults, scores: HeldOutScores, samples: int = TEST.bootstrap,
                      removed: float | None = None, tolerance: float | None = None, out: Path | None = None) -> Path:
    """``report/comparison.{html,md}``, the chart (PNG + HTML) and the tables as CSV, in the report folder of the
    sweep's first method folder (uploaded beside a sweep in remote storage). The target (``removed`` of the heads
    gone within ``tolerance`` test BLEU of the base model) defaults to the sweep's test.target_removed and
    test.tolerance."""
    settings = held_out_settings(gates.config)
    removed = settings.target_removed if removed is None else removed
    tolerance = settings.tolerance if tolerance is None else tolerance

    out = out or gates.path / REPORT_DIR
    points = point_table(scores)
    pairs = comparisons(scores, samples)
    included = included_comparisons(scores, samples)
    claims = claim_table(scores, settings.claims, samples)
    targets, base_bleu = target_table(scores, points, removed, tolerance)
    gate_folder = Path(gates.source).name == gates.config.get("name", Path(gates.source).name)
    settled = settled_steps(gates, scores.heads) if gate_folder else pd.DataFrame()
    budget_folders = [folder for method, _, folder, _ in method_folders(gates) if method == GATES_BUDGET]
    chosen = kept_settled(load_sweep(budget_folders[0])) if budget_folders else pd.DataFrame()
    table2 = table_two(scores, samples)
    figs = comparison_chart(scores, points, base_bleu, tolerance)
    charts.save(figs, out, "comparison")
    signature = "; ".join(sorted(set(scores.table[TEST_SIGNATURE].dropna())))
    scores.table.to_csv(out / "test_scores.csv", index=False)
    points.to_csv(out / "test_points.csv", index=False)
    pairs.to_csv(out / "test_comparisons.csv", index=False)
    table2.to_csv(out / "test_table2.csv", index=False)
    if not included.empty:
        included.to_csv(out / "test_included.csv", index=False)
    if not claims.empty:
        claims.to_csv(out / "test_claims.csv", index=False)
    lines = [f"# Test-set comparison: {gates.config.get('name') or gates.label}", "",
             f"Chosen on the validation split (the sweep's objectives); scored on the test split ({signature}). "
             f"Intervals: 95%, t over seeds per point; paired bootstrap over test sentences ({samples} resamples, "
             f"seeds redrawn) per comparison.", "",
             ("![Test BLEU against heads kept, mean and 95% interval over seeds per method](comparison.png) "
              "([interactive](comparison.html))"), ""]
    if math.isfinite(base_bleu):
        lines += [f"Base model: test BLEU {base_bleu:.2f}. Target: at least {removed * 100:g}% of the heads removed "
                  f"within {tolerance} BLEU of it (test BLEU >= {base_bleu - tolerance:.2f}).", "",
                  _markdown(targets), ""]
    if not claims.empty:
        lines += ["## The sweep's targets among its methods (test.claims)", "",
                  "Each at every budget both methods ran, fine-tuned equally long; A is the first method, B the "
                  "second; paired bootstrap as below.", "", _markdown(claims), "", *_claim_lines(claims), ""]
    lines += ["## Mean test BLEU per point", "", _markdown(points), "", "## Methods compared at equal budgets", "",
              _markdown(pairs), ""]
    resolved = pairs[pairs["verdict"] != "not resolved"] if not pairs.empty else pairs
    for _, r in resolved.iterrows():
        a_won = r["verdict"] == "A better"
        better, worse = (r["A"], r["B"]) if a_won else (r["B"], r["A"])
        low, high = (r["95% low"], r["95% high"]) if a_won else (-r["95% high"], -r["95% low"])  # better - worse
        training = f"{r['fine-tuning steps']} fine-tuning steps" if r["fine-tuning steps"] else "no fine-tuning"
        lines.append(f"- At {r['budget']} heads with {training}, {better} beats {worse} by {abs(r['A - B']):.2f} BLEU "
                     f"(95% interval {low:.2f} to {high:.2f}, p = {r['p']:.3f}).")
    if not pairs.empty and resolved.empty:
        lines.append("- No difference between methods is resolved at any budget: every interval includes 0.")
    if not included.empty:
        names = ", ".join(sorted(set(scores.table[ORIGIN]) - {scores.origin}))
        lines += ["", f"## Against the included sweeps ({names}): the same method at the same budget", "",
                  "What this sweep's recipe changed (its fine-tuning steps, distillation, the head budget's "
                  "constraint: whatever differs between the two sweeps' configs), paired over the same test sentences.",
                  "", _markdown(included), ""]
        lines += [_verdict_line(r, f"{r['A']} against {r['B']}", "this sweep", "the included sweep")
                  for _, r in included.iterrows()]
    if not table2.empty:
        title = "## Pruned from the trained model against the same layout trained from scratch (Voita et al., Table 2)"
        lines += ["", title, "", _markdown(table2), ""]
        for _, r in table2[table2["verdict"].isin(["pruned better", "scratch better"])].iterrows():
            pruned_won = r["verdict"] == "pruned better"
            better, worse = ("pruned", "from scratch") if pruned_won else ("from scratch", "pruned")
            low, high = (r["95% low"], r["95% high"]) if pruned_won else (-r["95% high"], -r["95% low"])
            lines.append(f"- Layout {r['layout']} ({r['heads']:g} heads): {better} beats {worse} by "
                         f"{abs(r['pruned - scratch']):.2f} BLEU (95% interval {low:.2f} to {high:.2f}, "
                         f"p = {r['p']:.3f}).")
        if not table2["verdict"].isin(["pruned better", "scratch better"]).any():
            lines.append("- No layout's difference between pruned and from scratch is resolved: every interval "
                         "includes 0.")
    if not settled.empty:
        lines += ["", "## When the gate trials' head counts stopped moving", "",
                  f"Median over {len(settled)} gate trials: step {settled['settled_step'].median():.0f} of "
                  f"{settled['last_step'].median():.0f} (latest: {settled['settled_step'].max():.0f}).", "",
                  _markdown(settled)]
    if not chosen.empty:
        lines += ["", "## When the gates at a budget settled on the heads they keep", "",
                  f"The top-k of each evaluation (`kept` in gates.jsonl); median over {len(chosen)} trials: step "
                  f"{chosen['settled_step'].median():.0f} of {chosen['last_step'].median():.0f} (latest: "
                  f"{chosen['settled_step'].max():.0f}).", "", _markdown(chosen)]
    lines += ["", "## Every scored trial (validation BLEU beside test BLEU)", "",
              _markdown(scores.table.drop(columns=[TEST_SIGNATURE], errors="ignore")), ""]
    atomic_write(out / "comparison.md", "\n".join(lines))
    page = Page(f"headsweep: test-set comparison of {gates.label}")
    page.p(lines[2])
    page.plot(figs[1])
    for title, df in (("Target", targets), ("The sweep's targets among its methods", claims),
                      ("Mean test BLEU per point", points),
                      ("Methods compared at equal budgets", pairs),
                      ("Against the included sweeps: the same method at the same budget", included),
                      ("Pruned against the same layout from scratch (Table 2)", table2),
                      ("Head counts settled", settled),
                      ("Kept heads settled (gates at a budget)", chosen),
                      ("Every scored trial", scores.table)):
        if not df.empty:
            page.h(title)
            page.table(df)
    path = page.write(out / "comparison.html")
    publish(gates, out)
    return path


def main(argv: list[str] | None = None, prog: str = "python -m analysis.testset") -> int:
    parser = command_parser(prog, "Score a finished sweep's chosen trials on the test split and compare its methods "
                            "with intervals (paired bootstrap over sentences, seeds).", [
        f"{prog} results/multi30k_en_de",
        f"{prog} s3://bucket/sweeps/multi30k_en_de --beam 5 --data-dir ../shared/data",
    ])
    parser.add_argument("folder", help="the sweep's gate folder (its other method folders lie beside it)")
    parser.add_argument("--beam", type=int, default=None, help="beam size (default: the sweep's test.beam_size)")
    parser.add_argument("--batch-size", type=int, default=None, help="sentences per decoding batch")
    parser.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples (default: test.bootstrap)")
    parser.add_argument("--device", default="cpu")
    add_data_dir(parser)
    args = parser.parse_args(argv)
    try:
        test = held_out_settings(load_sweep(args.folder).config)
        gates, scores = score_sweep(args.folder, args.beam or test.beam_size, args.batch_size or test.batch_size,
                                    args.device, data_dir(args), log=print, max_sentences=test.max_sentences)
        page = comparison_report(gates, scores, args.bootstrap or test.bootstrap)
    except (ResultsError, ScoringError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"test-set comparison: {page}" + (f" (uploaded to {join_storage(gates.source, 'report')})"
                                            if is_uri(gates.source) else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
