"""The training loop: plain PyTorch, no Ray. ``train(cfg, out_dir, report=...)`` is what a sweep wraps.

Every ``train.eval_every`` steps (and at the end) the loop scores the held-out split, writes a checkpoint
atomically, appends to ``metrics.jsonl``/``samples.jsonl``/``gates.jsonl`` in ``out_dir``, and calls
``report(metrics, checkpoint_path)``. A resumed run restores model, optimizer, step, epoch, position in the
epoch's batch order and RNG states, and so continues exactly as the unbroken run would have.

Command line::

    python -m model.train CONFIG.yaml [--set key=value ...] [--out DIR] [--init-from CKPT]
    python -m model.train [CONFIG.yaml] --out DIR --resume
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import metrics as M
from .checkpoint import (
    CheckpointError,
    checkpoint_config,
    checkpoint_tokenizers,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
)
from .cli import add_data_dir, add_out, add_set, command_parser, data_dir
from .config import ATTENTION_TYPES, Config, ConfigError, TrainConfig, flatten, load_config, save_config
from .corpora import CorpusError, stats_json
from .data import Batch, Data, collate, load_data, make_batches
from .evaluate import score, teacher_forced_nll, translate_split
from .files import atomic_write
from .transformer import Transformer

ReportFn = Callable[[dict[str, Any], Path | None], None]
STATUS_FILE, METRICS_FILE, SAMPLES_FILE, GATES_FILE = "status.json", "metrics.jsonl", "samples.jsonl", "gates.jsonl"
CHECKPOINT_DIR = "checkpoints"
PENALTY_RANGE = (1e-6, 1e4)  # where the head-budget controller keeps lambda
TARGET_START_PENALTY = 0.01  # lambda's start under gates.target_open when gates.penalty is 0
CLOSED_LOG_ALPHA = -20.0  # a head closed by the head budget: its gate is 0 in training and evaluation
OPEN_LOG_ALPHA = -2.0  # a head kept by the head budget starts at least here (evaluation gate 0.04, open)
DATA_STATS_FILE = "data_stats.json"  # per split: lines repaired (bom, crlf) and pairs dropped or cut, with reasons

# Keys that may differ between a checkpoint's config and the config it is resumed with: they change how long
# the run goes on, how it is observed or where it runs, never the trajectory of the steps already planned.
RESUMABLE_CHANGES = {
    "train.max_steps", "train.max_epochs", "train.max_minutes", "train.eval_every", "train.keep_checkpoints", "train.progress",
    "train.threads", "train.device", "data.cache_dir", "data.data_dir", "data.mirror",
}


class TrainingError(RuntimeError):
    """A run cannot start or continue (bad output folder, nothing to resume, mismatched checkpoint)."""


def learning_rate(step: int, cfg: TrainConfig, d_model: int) -> float:
    """Learning rate of optimizer step ``step`` (1-based).

    noam (Vaswani et al. 2017, eq. 3): ``lr * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)``, where
    ``lr`` is the step factor; inverse_sqrt: linear warm-up to ``lr``, then ``lr * sqrt(warmup / step)``;
    constant: linear warm-up to ``lr``; cosine: linear warm-up, then cosine decay to ``min_lr`` at max_steps.
    """
    s, w = max(step, 1), cfg.warmup_steps
    warm = min(1.0, s / w) if w > 0 else 1.0
    if cfg.schedule == "noam":
        return cfg.lr * d_model**-0.5 * min(s**-0.5, s * w**-1.5)
    if cfg.schedule == "inverse_sqrt":
        return cfg.lr * min(s / w, math.sqrt(w / s))
    if cfg.schedule == "constant":
        return cfg.lr * warm
    progress = min(1.0, max(0.0, (s - w) / max(1, cfg.max_steps - w)))
    return warm * (cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress)))


def config_differences(old: Config, new: Config) -> list[str]:
    """Keys whose values differ between two configs, as 'key: old -> new'."""
    a, b = flatten(old.to_dict()), flatten(new.to_dict())
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if a[k] != b[k]]


def pick_device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("Invalid setting for `train.device`: 'cuda'. Allowed: 'cpu' or 'auto' (no GPU is visible).")
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    if cfg.precision == "fp16":
        raise ConfigError("Invalid setting for `train.precision`: 'fp16'. Allowed: 'fp32' or 'bf16' without a GPU.")
    return torch.device("cpu")


@dataclass
class RunResult:
    status: str  # "completed" or "diverged"
    step: int
    metrics: dict[str, Any]  # those of the last evaluation
    checkpoint: Path | None  # the last checkpoint written
    out_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """One training run. Build it, then call :meth:`run`."""

    def __init__(
        self,
        cfg: Config,
        out_dir: str | Path,
        report: ReportFn | None = None,
        resume: bool = False,
        init_from: str | Path | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.out_dir = Path(out_dir).resolve()
        self.ckpt_dir = self.out_dir / CHECKPOINT_DIR
        self.report, self.log = report, log
        resume_payload = self._resume_payload(cfg) if resume else None
        if not resume and any(self.ckpt_dir.glob("step_*.pt")):
            raise TrainingError(
                f"{self.out_dir} already holds checkpoints of a run; pass --resume to continue it "
                f"or choose another --out folder"
            )
        init_payload = load_checkpoint(init_from) if init_from is not None and resume_payload is None else None
        self.cfg = cfg
        t = cfg.train
        self.device = pick_device(t)
        if t.threads is not None:
            torch.set_num_threads(t.threads)
        torch.manual_seed(t.seed)

        # 1) data: a checkpoint's own tokenizers when continuing from one
        source = resume_payload or init_payload
        tokenizers = checkpoint_tokenizers(source) if source is not None else None
        self.data: Data = load_data(cfg.data, cfg.eval.split, log, tokenizers, max_positions=cfg.model.max_positions)
        tok = self.data.tokenizers

        # 2) model, gates, freezing
        self.model = Transformer(cfg.model, len(tok.src), len(tok.tgt), cfg.gates)
        if init_payload is not None:
            base_cfg = checkpoint_config(init_payload)
            if base_cfg.model != cfg.model:
                diffs = [d for d in config_differences(base_cfg, cfg) if d.startswith("model.")]
                raise CheckpointError(f"--init-from {init_from}: model settings differ: {'; '.join(diffs)}")
            load_model_state(self.model, init_payload["model"], source=f"--init-from {init_from}")
        self.model.freeze(t.freeze)
        self.model.to(self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        gate_ids = {id(g.log_alpha) for _, _, g in self.model.gates()}
        groups = [{"params": [p for p in self.params if id(p) not in gate_ids], "lr_scale": 1.0},
                  {"params": [p for p in self.params if id(p) in gate_ids], "lr_scale": cfg.gates.lr_scale}]
        self.optimizer = torch.optim.Adam(
            [g for g in groups if g["params"]], lr=learning_rate(1, t, cfg.model.d_model), betas=tuple(t.adam_betas),
            eps=t.adam_eps, weight_decay=t.weight_decay,
        )
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.precision)
        self.scaler = torch.amp.GradScaler("cuda", enabled=t.precision == "fp16")
        self.loss_fn = torch.compile(self.model.loss, dynamic=True) if t.compile else self.model.loss

        # 3) counters, restored on resume
        self.step, self.epoch, self.batch_pos = 0, 0, 0
        self.train_seconds = 0.0
        self.wall_seconds = 0.0  # training + evaluation, over all sessions of the run
        self.best_bleu: float | None = None
        self.best_checkpoint: Path | None = None
        self.penalty = cfg.gates.penalty  # lambda; moves only under gates.target_open
        if cfg.gates.target_open is not None and self.penalty == 0.0:
            self.penalty = TARGET_START_PENALTY
        if resume_payload is not None:
            self._restore(resume_payload)
            save_config(cfg, self.out_dir / "config.yaml")  # it may extend max_steps or change eval_every
        else:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            for name in (METRICS_FILE, SAMPLES_FILE, GATES_FILE, STATUS_FILE):
                (self.out_dir / name).unlink(missing_ok=True)  # left by a run that died before its first checkpoint
            save_config(cfg, self.out_dir / "config.yaml")
        (self.out_dir / DATA_STATS_FILE).write_text(stats_json(self.data.stats) + "\n")

    # -- resume -----------------------------------------------------------------------------------

    def _resume_payload(self, cfg: Config) -> dict[str, Any]:
        """The newest readable checkpoint in ``out_dir``; an error (never a fresh start) if there is none."""
        candidates = sorted(self.ckpt_dir.glob("step_*.pt"), reverse=True)
        if not candidates:
            raise TrainingError(f"--resume: no checkpoint in {self.ckpt_dir}; nothing to resume")
        for path in candidates:
            try:
                payload = load_checkpoint(path)
            except CheckpointError as exc:
                self.log(f"skipping unreadable checkpoint {path.name}: {exc}")
                continue
            stored = checkpoint_config(payload)
            diffs = [d for d in config_differences(stored, cfg) if d.split(":")[0] not in RESUMABLE_CHANGES]
            if cfg.train.schedule == "cosine" and stored.train.max_steps != cfg.train.max_steps:
                diffs.append("train.max_steps (the cosine schedule depends on it)")
            if diffs:
                raise TrainingError(f"--resume: the config differs from the one {path} was trained with: "
                                    + "; ".join(diffs))
            self.log(f"resuming from {path}")
            self.resume_path = path
            return payload
        raise TrainingError(f"--resume: none of the {len(candidates)} checkpoints in {self.ckpt_dir} is readable")

    def _restore(self, p: dict[str, Any]) -> None:
        load_model_state(self.model, p["model"], source=str(self.resume_path))
        scales = [g["lr_scale"] for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(p["optimizer"])  # replaces each group's settings with the stored ones
        for group, scale in zip(self.optimizer.param_groups, scales, strict=True):
            group["lr_scale"] = scale  # absent from checkpoints of earlier versions; the config decides it
        if "scaler" in p:
            self.scaler.load_state_dict(p["scaler"])
        c = p["counters"]
        self.step, self.epoch, self.batch_pos = c["step"], c["epoch"], c["batch_pos"]
        self.train_seconds = c["train_seconds"]
        self.wall_seconds = c["wall_seconds"]
        self.best_bleu = c["best_bleu"]
        self.best_checkpoint = Path(c["best_checkpoint"]) if c["best_checkpoint"] else None
        self.penalty = c.get("penalty", self.cfg.gates.penalty)
        torch.set_rng_state(p["rng"]["torch"])
        if torch.cuda.is_available() and p["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(p["rng"]["cuda"])
        # Logs may run ahead of the checkpoint if the run died between the two writes: cut them back.
        for name in (METRICS_FILE, SAMPLES_FILE, GATES_FILE):
            path = self.out_dir / name
            if path.exists():
                lines = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)[M.STEP] <= self.step]
                path.write_text("".join(ln + "\n" for ln in lines))

    # -- one optimizer step -------------------------------------------------------------------------

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _train_step(self, batches: list[Batch]) -> tuple[float, float, int]:
        """Forward/backward over the micro-batches of one step and an optimizer update.

        Loss = sum of token cross-entropies / number of target tokens in the step + lambda * L0 penalty.
        Returns (summed CE, summed NLL, target tokens); a non-finite CE leaves the parameters untouched.
        """
        t = self.cfg.train
        lr = learning_rate(self.step + 1, t, self.cfg.model.d_model)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        self.optimizer.zero_grad(set_to_none=True)
        n_tokens = sum(b.n_tokens for b in batches)
        ce_total, nll_total = 0.0, 0.0
        for batch in batches:
            batch = batch.to(self.device)
            with self._autocast():
                out = self.loss_fn(batch.src, batch.tgt_in, batch.tgt_out, t.label_smoothing)
            self.scaler.scale(out.ce_sum / n_tokens).backward()
            ce_total += float(out.ce_sum.detach())
            nll_total += float(out.nll_sum)
        if not math.isfinite(ce_total):
            return ce_total, nll_total, n_tokens
        if self.penalty > 0.0:
            self.scaler.scale(self.penalty * self.model.penalty_l0()).backward()
        if t.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, t.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self._steer_penalty()
        return ce_total, nll_total, n_tokens

    def _steer_penalty(self) -> None:
        """Head budget (gates.target_open), after each step: steer lambda, or hold the kept heads fixed."""
        g = self.cfg.gates
        if g.target_open is None:
            return
        gates = [gate for _, _, gate in self.model.gates()]
        fix_step = int(g.target_fix_at * self.cfg.train.max_steps)
        with torch.no_grad():
            if self.step + 1 < fix_step:  # self.step counts the steps before this one
                expected = float(self.model.expected_l0())
                factor = math.exp(g.target_gain * (expected - g.target_open) / sum(x.log_alpha.numel() for x in gates))
                self.penalty = min(max(self.penalty * factor, PENALTY_RANGE[0]), PENALTY_RANGE[1])
                return
            alphas = torch.cat([x.log_alpha for x in gates])
            closed = alphas == CLOSED_LOG_ALPHA
            if int((~closed).sum()) > g.target_open:  # the step the budget is fixed (or a resume before it)
                order = torch.argsort(alphas, descending=True, stable=True)
                closed = torch.ones_like(closed)
                closed[order[: g.target_open]] = False
                alphas = torch.where(closed, torch.full_like(alphas, CLOSED_LOG_ALPHA),
                                     alphas.clamp_min(OPEN_LOG_ALPHA))
                self.penalty = 0.0
            else:  # Adam's momentum must not reopen a closed head
                alphas = torch.where(closed, torch.full_like(alphas, CLOSED_LOG_ALPHA), alphas)
            for gate, values in zip(gates, alphas.split([x.log_alpha.numel() for x in gates]), strict=True):
                gate.log_alpha.copy_(values)

    # -- evaluation and checkpoints -----------------------------------------------------------------

    def evaluate(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(metrics, details) of the current model on the held-out split; details hold samples and signatures."""
        e = self.cfg.eval
        split = self.data.splits[e.split]
        hyps = translate_split(self.model, split, self.data.tokenizers, e, self.device)
        refs = split.tgt_text[: len(hyps)]
        s = score(hyps, refs)
        heads = self.model.open_heads()
        metrics = {
            M.BLEU: s.bleu, M.CHRF: s.chrf, M.BLEU_SIGNATURE: s.bleu_signature, M.CHRF_SIGNATURE: s.chrf_signature,
            M.VALID_NLL: teacher_forced_nll(self.model, split, e.batch_size, self.device, e.max_sentences),
            M.OPEN_HEADS: heads["total"],
            **{M.open_heads_key(k): heads[k] for k in ATTENTION_TYPES},
            **{M.open_heads_layer_key(kind, layer): int(n)
               for kind, entry in self.model.gate_report().items() for layer, n in enumerate(entry["open"])},
            **{M.open_heads_layer_key(kind, layer): int(n)  # a physically pruned model: the heads it kept
               for kind, counts in (self.cfg.model.heads or {}).items() for layer, n in enumerate(counts)},
        }
        with torch.no_grad():
            metrics[M.L0] = float(self.model.expected_l0())
            metrics[M.PENALTY] = float(self.model.penalty_l0())
        metrics[M.LAMBDA] = self.penalty
        samples = [{"source": split.src_text[i], "reference": refs[i], "hypothesis": hyps[i]}
                   for i in range(min(e.samples, len(hyps)))]
        details = {"samples": samples, "bleu_signature": s.bleu_signature, "chrf_signature": s.chrf_signature,
                   "sentences": len(hyps)}
        return metrics, details

    def save(self) -> Path:
        path = self.ckpt_dir / f"step_{self.step:08d}.pt"
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "counters": {
                "step": self.step, "epoch": self.epoch, "batch_pos": self.batch_pos,
                "train_seconds": self.train_seconds, "wall_seconds": self.wall_seconds, "best_bleu": self.best_bleu,
                "penalty": self.penalty,
                "best_checkpoint": str(self.best_checkpoint) if self.best_checkpoint else None,
            },
            "rng": rng,
            # the schedule is a pure function of the step and the config; recorded for readers of the file
            "scheduler": {"schedule": self.cfg.train.schedule,
                          "lr": learning_rate(max(1, self.step), self.cfg.train, self.cfg.model.d_model)},
        }
        save_checkpoint(path, state, self.cfg, self.data.tokenizers)
        return path

    def _prune_checkpoints(self) -> None:
        keep = set(sorted(self.ckpt_dir.glob("step_*.pt"))[-self.cfg.train.keep_checkpoints :])
        if self.best_checkpoint is not None:
            keep.add(self.best_checkpoint)
        for path in self.ckpt_dir.glob("step_*.pt"):
            if path not in keep:
                path.unlink()

    def _append(self, name: str, record: dict[str, Any]) -> None:
        with open(self.out_dir / name, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def _write_status(self, status: str, extra: dict[str, Any] | None = None) -> None:
        record = {M.STATUS: status, M.STEP: self.step, M.EPOCH: self.epoch, **(extra or {})}
        atomic_write(self.out_dir / STATUS_FILE, json.dumps(record, indent=2) + "\n")

    # -- the loop -----------------------------------------------------------------------------------

    def run(self) -> RunResult:
        t, d = self.cfg.train, self.cfg.data
        train = self.data.splits["train"]
        src_len, tgt_len = train.src_lengths, train.tgt_lengths
        self.model.train()
        progress = None
        if t.progress:
            from tqdm import tqdm

            progress = tqdm(total=t.max_steps, initial=self.step, unit="step", file=sys.stderr, dynamic_ncols=True)
            if self.log is print:
                self.log = tqdm.write  # messages above the bar, not through it
        history: list[dict[str, Any]] = []
        last_metrics: dict[str, Any] = {}
        last_ckpt: Path | None = None
        window = {"ce": 0.0, "nll": 0.0, "tokens": 0, "seconds": 0.0}
        status = "completed"
        self._write_status("running")
        wall_start, wall_base = time.perf_counter(), self.wall_seconds

        def out_of_time() -> bool:
            self.wall_seconds = wall_base + time.perf_counter() - wall_start
            return t.max_minutes is not None and self.wall_seconds >= 60.0 * t.max_minutes

        def checkpoint_and_report(status_now: str) -> None:
            nonlocal last_metrics, last_ckpt
            metrics, details = self.evaluate()
            tokens = max(1, window["tokens"])
            metrics.update({
                M.STEP: self.step, M.EPOCH: self.epoch, M.LR: learning_rate(max(1, self.step), t, self.cfg.model.d_model),
                M.LOSS: window["ce"] / tokens if window["tokens"] else float("nan"),
                M.NLL: window["nll"] / tokens if window["tokens"] else float("nan"),
                M.TOKENS_PER_S: window["tokens"] / max(window["seconds"], 1e-9),
                M.TRAIN_SECONDS: self.train_seconds, M.STATUS: status_now,
            })
            if self.best_bleu is None or metrics[M.BLEU] > self.best_bleu:
                self.best_bleu = metrics[M.BLEU]
                self.best_checkpoint = self.ckpt_dir / f"step_{self.step:08d}.pt"
            out_of_time()  # brings wall_seconds up to date for the checkpoint
            path = self.save()
            self._prune_checkpoints()
            self._append(METRICS_FILE, metrics)
            self._append(SAMPLES_FILE, {M.STEP: self.step, **details})
            self._append(GATES_FILE, {M.STEP: self.step, "gates": self.model.gate_report()})
            window.update(ce=0.0, nll=0.0, tokens=0, seconds=0.0)
            self.log(f"step {self.step}: BLEU {metrics[M.BLEU]:.2f} chrF {metrics[M.CHRF]:.2f} "
                     f"valid_nll {metrics[M.VALID_NLL]:.3f} open heads {metrics[M.OPEN_HEADS]}")
            for sample in details["samples"]:
                self.log(f"  src: {sample['source']}\n  ref: {sample['reference']}\n  hyp: {sample['hypothesis']}")
            if self.report is not None:
                self.report(dict(metrics), path)
            last_metrics, last_ckpt = metrics, path
            history.append(metrics)

        evaluated_at = self.step
        timed_out = False
        while self.step < t.max_steps and (t.max_epochs is None or self.epoch < t.max_epochs) and not timed_out:
            batches = make_batches(src_len, tgt_len, d.max_tokens, d.batch_size, d.bucket_size, t.seed, self.epoch)
            while self.batch_pos < len(batches) and self.step < t.max_steps and not timed_out:
                group = batches[self.batch_pos : self.batch_pos + t.accumulation]
                start = time.perf_counter()
                ce, nll, n_tok = self._train_step([collate(train, idx) for idx in group])
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - start
                if not math.isfinite(ce):
                    status = "diverged"
                    break
                self.batch_pos += len(group)
                self.step += 1
                self.train_seconds += elapsed
                window["ce"] += ce
                window["nll"] += nll
                window["tokens"] += n_tok
                window["seconds"] += elapsed
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{ce / max(1, n_tok):.3f}", epoch=self.epoch,
                                         tok_s=f"{window['tokens'] / max(window['seconds'], 1e-9):.0f}")
                by_steps = t.eval_unit == "steps" and self.step % t.eval_every == 0
                if by_steps or self.step == t.max_steps:
                    checkpoint_and_report("running" if self.step < t.max_steps else "completed")
                    evaluated_at = self.step
                timed_out = out_of_time()
            if status == "diverged":
                break
            if self.batch_pos >= len(batches):
                self.epoch, self.batch_pos = self.epoch + 1, 0
                last_epoch = t.max_epochs is not None and self.epoch >= t.max_epochs
                if t.eval_unit == "epochs" and self.epoch % t.eval_every == 0 and evaluated_at != self.step:
                    checkpoint_and_report("completed" if last_epoch else "running")
                    evaluated_at = self.step
        if progress is not None:
            progress.close()

        if status == "diverged":
            reason = f"non-finite loss at step {self.step + 1}"
            self.log(f"diverged: {reason}; the last good checkpoint is {last_ckpt}")
            diverged = {M.STEP: self.step, M.EPOCH: self.epoch, M.STATUS: "diverged", M.LOSS: float("nan"),
                        M.REASON: reason}
            if self.report is not None:
                self.report(diverged, None)
            self._write_status("diverged", {"reason": reason, "last_checkpoint": str(last_ckpt) if last_ckpt else None})
            return RunResult("diverged", self.step, diverged, last_ckpt, self.out_dir, history)
        if timed_out:
            self.log(f"train.max_minutes={t.max_minutes} reached at step {self.step}")
        if evaluated_at != self.step or not last_metrics:
            checkpoint_and_report("completed")  # stopped by max_epochs or max_minutes, or resumed at the end
        self._write_status("completed", {
            "last_checkpoint": str(last_ckpt), "best_checkpoint": str(self.best_checkpoint),
            "best_bleu": self.best_bleu, "metrics": last_metrics,
        })
        return RunResult("completed", self.step, last_metrics, last_ckpt, self.out_dir, history)


def train(
    cfg: Config,
    out_dir: str | Path,
    report: ReportFn | None = None,
    resume: bool = False,
    init_from: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> RunResult:
    """Train (or, with ``resume``, continue) one run in ``out_dir``; see :class:`Trainer`."""
    return Trainer(cfg, out_dir, report=report, resume=resume, init_from=init_from, log=log).run()


def main(argv: list[str] | None = None, prog: str = "python -m model.train") -> int:
    parser = command_parser(prog, "Train one model (plain PyTorch, no Ray).", [
        f"{prog} sweeps/runs/quickstart.yaml --set train.max_steps=2000 --out results/runs/my-run",
        f"{prog} --out results/runs/my-run --resume",
        f"{prog} sweeps/runs/multi30k_base.yaml --data-dir ../shared/data --out results/runs/multi30k_base",
    ])
    parser.add_argument("config", nargs="?", default=None,
                        help="YAML config (see sweeps/runs/quickstart.yaml); with --resume, default: the run's own")
    add_set(parser)
    add_out(parser, "the run's config, logs and checkpoints (default: a new results/runs/<config name>/<date-time>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    add_data_dir(parser)
    parser.add_argument("--init-from", default=None, metavar="CKPT",
                        help="start from this checkpoint's weights (e.g. a converged plain model, to prune)")
    args = parser.parse_args(argv)
    if args.resume and args.out is None:
        parser.error("--resume needs --out: the folder of the run to continue")
    if args.config is None and not args.resume:
        parser.error("a config file is needed (or --resume --out DIR to continue a run with its own config)")
    config_path = args.config or Path(args.out) / "config.yaml"
    if data_dir(args) is not None:
        args.overrides.append(f"data.data_dir={data_dir(args)}")
    try:
        cfg = load_config(config_path, args.overrides)
        out = Path(args.out or Path("results") / "runs" / Path(config_path).stem / time.strftime("%Y%m%d-%H%M%S"))
        print(f"run folder: {out}", file=sys.stderr)
        result = train(cfg, out, resume=args.resume, init_from=args.init_from)
    except (ConfigError, TrainingError, CheckpointError, CorpusError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result.status == "diverged":
        print(f"run diverged at step {result.step}; see {result.out_dir / STATUS_FILE}", file=sys.stderr)
        return 1
    m = result.metrics
    print(f"final: step {result.step}  BLEU {m[M.BLEU]:.2f}  chrF {m[M.CHRF]:.2f}  "
          f"open heads {m[M.OPEN_HEADS]}  checkpoint {result.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
