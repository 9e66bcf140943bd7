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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import metrics as M
from .budget import CLOSED_LOG_ALPHA, HeadBudget
from .checkpoint import (
    CheckpointError,
    checkpoint_config,
    checkpoint_tokenizers,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
)
from .cli import add_data_dir, add_out, add_set, command_parser, data_dir
from .config import Config, ConfigError, TrainConfig, flatten, load_config, save_config
from .corpora import CorpusError, stats_json
from .data import Batch, Data, collate, load_data, make_batches
from .distill import distill_loss, load_teacher
from .evaluate import evaluate_model
from .files import atomic_write
from .schedule import learning_rate
from .transformer import Transformer

ReportFn = Callable[[dict[str, Any], Path | None], None]
LogFn = Callable[[dict[str, Any]], None]
STATUS_FILE, METRICS_FILE, SAMPLES_FILE, GATES_FILE = "status.json", "metrics.jsonl", "samples.jsonl", "gates.jsonl"
TRAIN_LOG_FILE = "train_log.jsonl"  # every train.log_every steps: loss, learning rates, distillation, budget, tokens/s
TRAIN_LOG_PREFIX = "train/"  # its keys (W&B shows them beside the evaluations' without mixing the two)
CHECKPOINT_DIR = "checkpoints"
PROGRESS_LINE_SECONDS = 300  # without a progress bar (sweep trials): a line of where training is, this often
DATA_STATS_FILE = "data_stats.json"  # per split: lines repaired (bom, crlf) and pairs dropped or cut, with reasons

# Keys that may differ between a checkpoint's config and the config it is resumed with: they change how long
# the run goes on, how it is observed or where it runs, never the trajectory of the steps already planned.
RESUMABLE_CHANGES = {
    "train.max_steps", "train.max_epochs", "train.max_minutes", "train.eval_every", "train.keep_checkpoints", "train.progress",
    "train.threads", "train.device", "data.cache_dir", "data.data_dir", "data.mirror", "train.log_every",
}


def fused_adam(params: list[torch.Tensor]) -> bool | None:
    """True where PyTorch's fused Adam applies (floating-point parameters on a CPU or a CUDA GPU), else None
    (PyTorch's own choice)."""
    return True if params and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params) else None


class TrainingError(RuntimeError):
    """A run cannot start or continue (bad output folder, nothing to resume, mismatched checkpoint)."""


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


@dataclass
class LossWindow:
    """Training loss since the previous evaluation: summed CE and NLL, target tokens, seconds."""

    ce: float = 0.0
    nll: float = 0.0
    tokens: int = 0
    seconds: float = 0.0
    kd: float | None = None  # summed distillation term (None: the run distills nothing)

    def add(self, ce: float, nll: float, tokens: int, seconds: float, kd: float | None = None) -> None:
        self.ce, self.nll, self.tokens, self.seconds = (self.ce + ce, self.nll + nll, self.tokens + tokens,
                                                        self.seconds + seconds)
        if kd is not None:
            self.kd = (self.kd or 0.0) + kd

    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)

    def metrics(self) -> dict[str, float]:
        per_token = max(1, self.tokens)
        out = {M.LOSS: self.ce / per_token if self.tokens else float("nan"),
               M.NLL: self.nll / per_token if self.tokens else float("nan"), M.TOKENS_PER_S: self.tokens_per_s()}
        if self.kd is not None:
            out[M.DISTILL_LOSS] = self.kd / per_token if self.tokens else float("nan")
        return out


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
        teacher: str | Path | None = None,
        on_log: LogFn | None = None,
    ) -> None:
        self.out_dir = Path(out_dir).resolve()
        self.ckpt_dir = self.out_dir / CHECKPOINT_DIR
        self.report, self.log, self.on_log = report, log, on_log
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

        # 2) model, gates, freezing; optimizer with the gates' own learning-rate scale
        self.model = self._build_model(init_payload, init_from)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = self._build_optimizer()
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.precision)
        self.scaler = torch.amp.GradScaler("cuda", enabled=t.precision == "fp16")
        self.loss_fn = torch.compile(self.model.loss, dynamic=True) if t.compile else self.model.loss
        # the head budget's constraint (gates.target_open) and the teacher (distill), neither of them in self.params
        self.budget = HeadBudget(self.model, cfg.gates, cfg.model, t.max_steps) if cfg.gates.target_open is not None \
            else None
        self.teacher = self._teacher(teacher) if cfg.distill.enabled else None

        # 3) counters, restored on resume
        self.step, self.epoch, self.batch_pos = 0, 0, 0
        self.train_seconds = 0.0
        self.wall_seconds = 0.0  # training + evaluation, over all sessions of the run
        self.best_bleu: float | None = None
        self.best_checkpoint: Path | None = None
        self.divergence: str | None = None  # why a step was refused (see _train_step)
        self.penalty = cfg.gates.penalty if self.budget is None else 0.0  # lambda (a budget constrains instead)
        if resume_payload is not None:
            self._restore(resume_payload)
            save_config(cfg, self.out_dir / "config.yaml")  # it may extend max_steps or change eval_every
            for leftover in self.ckpt_dir.glob(".step_*.pt.*.tmp"):  # a write killed before its rename
                self.log(f"removing {leftover.name}: a checkpoint write that never finished")
                leftover.unlink(missing_ok=True)
        else:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            for name in (METRICS_FILE, SAMPLES_FILE, GATES_FILE, TRAIN_LOG_FILE, STATUS_FILE):
                (self.out_dir / name).unlink(missing_ok=True)  # left by a run that died before its first checkpoint
            save_config(cfg, self.out_dir / "config.yaml")
        (self.out_dir / DATA_STATS_FILE).write_text(stats_json(self.data.stats) + "\n")

    def _build_model(self, init_payload: dict[str, Any] | None, init_from: str | Path | None) -> Transformer:
        """The model of ``cfg`` (weights from ``init_payload`` when given), frozen as asked, on the device."""
        cfg, tok = self.cfg, self.data.tokenizers
        model = Transformer(cfg.model, len(tok.src), len(tok.tgt), cfg.gates)
        if init_payload is not None:
            base_cfg = checkpoint_config(init_payload)
            if base_cfg.model != cfg.model:
                diffs = [d for d in config_differences(base_cfg, cfg) if d.startswith("model.")]
                raise CheckpointError(f"--init-from {init_from}: model settings differ: {'; '.join(diffs)}")
            load_model_state(model, init_payload["model"], source=f"--init-from {init_from}")
        model.freeze(cfg.train.freeze)
        return model.to(self.device)

    def _teacher(self, path: str | Path | None):
        """The unpruned model distillation learns from: ``path`` (a sweep's base model), else distill.teacher."""
        path = path if path is not None else self.cfg.distill.teacher
        if path is None:
            raise TrainingError("distill.weight or distill.hidden_weight is set but there is no teacher: set "
                                "distill.teacher to a checkpoint of the unpruned model (a sweep gives each trial its "
                                "base model)")
        return load_teacher(path, self.data.tokenizers, self.device)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        """Adam over the trainable parameters; the gates' ``log_alpha`` in a group of their own (``gates.lr``, else
        ``gates.lr_scale``). PyTorch's fused Adam (one kernel over all parameters) on a CPU or a CUDA GPU: the
        per-tensor loop's update up to float rounding, several times faster (bench/throughput.py times steps with
        it). A resumed run goes on with the implementation its checkpoint's groups name (``load_state_dict``)."""
        t = self.cfg.train
        gate_ids = {id(g.log_alpha) for _, _, g in self.model.gates()}
        g = self.cfg.gates
        gate_scale = g.lr / t.lr if g.lr is not None else g.lr_scale  # gates.lr: its own peak, the same schedule
        groups = [{"params": [p for p in self.params if id(p) not in gate_ids], "lr_scale": 1.0},
                  {"params": [p for p in self.params if id(p) in gate_ids], "lr_scale": gate_scale}]
        return torch.optim.Adam([g for g in groups if g["params"]], lr=learning_rate(1, t, self.cfg.model.d_model),
                                betas=tuple(t.adam_betas), eps=t.adam_eps, weight_decay=t.weight_decay,
                                fused=fused_adam(self.params))

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
            if cfg.gates.target_open is not None and stored.train.max_steps != cfg.train.max_steps:
                diffs.append(f"train.max_steps: {stored.train.max_steps} -> {cfg.train.max_steps} (the head budget "
                             f"fixes its heads at gates.target_fix_at x train.max_steps)")
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
        self.resumed_log_window = LossWindow(**c["log_window"]) if "log_window" in c else None
        if self.budget is not None:
            self.budget.load_state_dict(p["budget"])
        torch.set_rng_state(p["rng"]["torch"])
        if torch.cuda.is_available() and p["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(p["rng"]["cuda"])
        # Logs may run ahead of the checkpoint if the run died between the two writes: cut them back.
        for name in (METRICS_FILE, SAMPLES_FILE, GATES_FILE, TRAIN_LOG_FILE):
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
        Returns (summed CE, summed NLL, target tokens); a non-finite CE leaves the parameters untouched, and so does
        a non-finite gradient with a finite CE (fp32/bf16: the CE is returned as NaN and ``divergence`` says why;
        fp16's loss scaler skips such a step itself and lowers its scale).
        """
        t = self.cfg.train
        lr = learning_rate(self.step + 1, t, self.cfg.model.d_model)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        self.optimizer.zero_grad(set_to_none=True)
        n_tokens = sum(b.n_tokens for b in batches)
        ce_total, nll_total = 0.0, 0.0
        self.kd_total = 0.0 if self.teacher is not None else None
        for batch in batches:
            batch = batch.to(self.device)
            with self._autocast():
                loss, ce, nll = self._batch_loss(batch, n_tokens)
            self.scaler.scale(loss).backward()
            ce_total += ce
            nll_total += nll
        if not math.isfinite(ce_total):
            return ce_total, nll_total, n_tokens
        if self.penalty > 0.0:
            self.scaler.scale(self.penalty * self.model.penalty_l0()).backward()
        if self.budget is not None and self.budget.pruning(self.step + 1):
            self.scaler.scale(self.budget.term(self.step + 1)).backward()
        if self.scaler.is_enabled():
            if t.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.params, t.grad_clip)
        else:  # the norm is computed anyway: a NaN or inf in it must not reach the weights (clipping would spread it)
            norm = torch.nn.utils.clip_grad_norm_(self.params, t.grad_clip if t.grad_clip is not None else math.inf)
            if not math.isfinite(float(norm)):
                self.optimizer.zero_grad(set_to_none=True)
                self.divergence = f"non-finite gradient at step {self.step + 1} (the loss was finite: {ce_total:.4g})"
                return math.nan, nll_total, n_tokens
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.budget is not None:
            self.budget.ascend()
            self.budget.after_step(self.step + 1)
        return ce_total, nll_total, n_tokens

    def _batch_loss(self, batch: Batch, n_tokens: int) -> tuple[torch.Tensor, float, float]:
        """(the loss to backpropagate, summed CE, summed NLL) of one micro-batch of a step with ``n_tokens``
        target tokens; with a teacher the loss mixes in the distillation terms (``kd_total`` sums its KL term)."""
        t = self.cfg.train
        if self.teacher is None:
            out = self.loss_fn(batch.src, batch.tgt_in, batch.tgt_out, t.label_smoothing)
            return out.ce_sum / n_tokens, float(out.ce_sum.detach()), float(out.nll_sum)
        d = self.cfg.distill
        out = distill_loss(self.model, self.teacher, batch.src, batch.tgt_in, batch.tgt_out, t.label_smoothing, d)
        loss = ((1.0 - d.weight) * out.ce_sum + d.weight * out.kd_sum) / n_tokens
        if d.hidden_weight > 0.0:
            loss = loss + d.hidden_weight * out.hidden * (out.n_tokens / n_tokens)
        self.kd_total += float(out.kd_sum.detach())
        return loss, float(out.ce_sum.detach()), out.nll_sum

    # -- evaluation and checkpoints -----------------------------------------------------------------

    def evaluate(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(metrics, details) of the current model on the held-out split; details hold samples and signatures."""
        if self.budget is None:
            metrics, details = evaluate_model(self.model, self.data, self.cfg, self.device)
        else:  # the heads the budget keeps now (its top-k)
            with self.budget.top_k():
                metrics, details = evaluate_model(self.model, self.data, self.cfg, self.device)
            metrics.update(self.budget.metrics(self.step))
        metrics[M.LAMBDA] = self.penalty
        return metrics, details

    def _close_small_gates(self, metrics: dict[str, Any], details: dict[str, Any]):
        """The end of a run with learned gates and no head budget: heads whose eval gate lies in (0,
        gates.min_open) are removed together (closed for good) if the held-out BLEU without them is at least the
        BLEU with them minus gates.min_open_tolerance; otherwise they stay. Either way the open-head count is what
        the pruned model computes with. Returns the (metrics, details) of the model as it is left."""
        g = self.cfg.gates
        if g.min_open <= 0.0 or g.target_open is not None or self.model.gate_mode != "learned":
            return metrics, details
        gates = [gate for _, _, gate in self.model.gates()]
        with torch.no_grad():
            small = [(gate.eval_gates() > 0) & (gate.eval_gates() < g.min_open) for gate in gates]
        count = sum(int(mask.sum()) for mask in small)
        metrics[M.SMALL_HEADS_CLOSED] = 0
        if count == 0:
            return metrics, details
        saved = [gate.log_alpha.detach().clone() for gate in gates]
        with torch.no_grad():
            for gate, mask in zip(gates, small, strict=True):
                gate.log_alpha[mask] = CLOSED_LOG_ALPHA
        closed, closed_details = self.evaluate()
        with_them, without = metrics[M.BLEU], closed[M.BLEU]
        if without >= with_them - g.min_open_tolerance:
            self.log(f"removed {count} heads with eval gates below gates.min_open={g.min_open}: "
                     f"BLEU {with_them:.2f} with them, {without:.2f} without")
            return {**closed, M.SMALL_HEADS_CLOSED: count, M.BLEU_WITH_SMALL_HEADS: with_them}, closed_details
        with torch.no_grad():
            for gate, values in zip(gates, saved, strict=True):
                gate.log_alpha.copy_(values)
        self.log(f"kept {count} heads with eval gates below gates.min_open={g.min_open}: "
                 f"BLEU {with_them:.2f} with them, {without:.2f} without")
        return {**metrics, M.BLEU_WITH_SMALL_HEADS: with_them}, details

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
                "log_window": asdict(self.log_window),  # the training log's steps since its last record
                "best_checkpoint": str(self.best_checkpoint) if self.best_checkpoint else None,
            },
            "rng": rng,
            **({"budget": self.budget.state_dict()} if self.budget is not None else {}),
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

    def _out_of_time(self) -> bool:
        """Brings ``wall_seconds`` up to date; True once ``train.max_minutes`` is spent."""
        self.wall_seconds = self._wall_base + time.perf_counter() - self._wall_start
        t = self.cfg.train
        return t.max_minutes is not None and self.wall_seconds >= 60.0 * t.max_minutes

    def _checkpoint_and_report(self, status_now: str) -> None:
        """1) score the held-out split, 2) write the checkpoint and the logs, 3) hand both to ``report``."""
        metrics, details = self.evaluate()
        if status_now == M.COMPLETED:
            metrics, details = self._close_small_gates(metrics, details)
        # every evaluation reports the same keys (Ray's progress.csv takes its columns from the first row)
        metrics.setdefault(M.SMALL_HEADS_CLOSED, 0)
        metrics.setdefault(M.BLEU_WITH_SMALL_HEADS, math.nan)
        metrics.update({
            M.STEP: self.step, M.EPOCH: self.epoch,
            M.LR: learning_rate(max(1, self.step), self.cfg.train, self.cfg.model.d_model),
            **self.window.metrics(), M.TRAIN_SECONDS: self.train_seconds, M.STATUS: status_now,
        })
        if self.best_bleu is None or metrics[M.BLEU] > self.best_bleu:
            self.best_bleu = metrics[M.BLEU]
            self.best_checkpoint = self.ckpt_dir / f"step_{self.step:08d}.pt"
        self._out_of_time()  # brings wall_seconds up to date for the checkpoint
        path = self.save()
        self._prune_checkpoints()
        self._append(METRICS_FILE, metrics)
        self._append(SAMPLES_FILE, {M.STEP: self.step, **details})
        kept = {"kept": {group: keep.tolist() for group, keep in zip(self.budget.targets, self.budget.kept(),
                                                                      strict=True)}} if self.budget else {}
        self._append(GATES_FILE, {M.STEP: self.step, "gates": self.model.gate_report(), **kept})
        self.window = LossWindow()
        self.log(f"step {self.step}: BLEU {metrics[M.BLEU]:.2f} chrF {metrics[M.CHRF]:.2f} "
                 f"valid_nll {metrics[M.VALID_NLL]:.3f} open heads {metrics[M.OPEN_HEADS]}")
        for sample in details["samples"]:
            self.log(f"  src: {sample['source']}\n  ref: {sample['reference']}\n  hyp: {sample['hypothesis']}")
        if self.report is not None:
            self.report(dict(metrics), path)
        self.last_metrics, self.last_checkpoint = metrics, path
        self.history.append(metrics)
        self.evaluated_at = self.step

    def _progress_bar(self):
        if not self.cfg.train.progress:
            return None
        from tqdm import tqdm

        if self.log is print:
            self.log = tqdm.write  # messages above the bar, not through it
        return tqdm(total=self.cfg.train.max_steps, initial=self.step, unit="step", file=sys.stderr,
                    dynamic_ncols=True)

    def _run_epoch(self, progress) -> tuple[str | None, bool]:
        """Steps through the rest of the current epoch's batches (their order is a function of the seed and the
        epoch, so a resumed run continues it exactly). Returns why it stopped early ("diverged", "timed_out" or
        None) and whether the epoch's batches are used up."""
        t, d = self.cfg.train, self.cfg.data
        train = self.data.splits["train"]
        batches = make_batches(train.src_lengths, train.tgt_lengths, d.max_tokens, d.batch_size, d.bucket_size,
                               t.seed, self.epoch)
        while self.batch_pos < len(batches) and self.step < t.max_steps:
            group = batches[self.batch_pos : self.batch_pos + t.accumulation]
            start = time.perf_counter()
            ce, nll, n_tok = self._train_step([collate(train, idx) for idx in group])
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            if not math.isfinite(ce):
                return M.DIVERGED, False
            self.batch_pos += len(group)
            self.step += 1
            self.train_seconds += elapsed
            self.window.add(ce, nll, n_tok, elapsed, self.kd_total)
            self.log_window.add(ce, nll, n_tok, elapsed, self.kd_total)
            if t.log_every and self.step % t.log_every == 0:
                self._train_log()
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{ce / max(1, n_tok):.3f}", epoch=self.epoch,
                                     tok_s=f"{self.window.tokens_per_s():.0f}")
            elif time.perf_counter() - self._line_at >= PROGRESS_LINE_SECONDS:
                self._progress_line()
            if (t.eval_unit == "steps" and self.step % t.eval_every == 0) or self.step == t.max_steps:
                self._checkpoint_and_report(M.RUNNING if self.step < t.max_steps else M.COMPLETED)
            if self._out_of_time():
                return "timed_out", self.batch_pos >= len(batches)
        return None, self.batch_pos >= len(batches)

    def _train_log(self) -> None:
        """A training-log record of the steps since the previous one: to train_log.jsonl and to ``on_log``."""
        w = self.log_window.metrics()
        record: dict[str, Any] = {M.STEP: self.step, **{TRAIN_LOG_PREFIX + k: v for k, v in w.items()}}
        gate_ids = {id(g.log_alpha) for _, _, g in self.model.gates()}
        for group in self.optimizer.param_groups:
            gates = any(id(p) in gate_ids for p in group["params"])
            record[TRAIN_LOG_PREFIX + M.LR + ("_gates" if gates else "")] = group["lr"]
        if self.penalty:
            record[TRAIN_LOG_PREFIX + M.LAMBDA] = self.penalty
        if self.budget is not None:
            record.update({TRAIN_LOG_PREFIX + k: v for k, v in self.budget.metrics(self.step).items()})
        self._append(TRAIN_LOG_FILE, record)
        self.log_window = LossWindow()
        if self.on_log is not None:
            self.on_log(record)

    def _progress_line(self) -> None:
        """Where training is, for logs without a progress bar (a trial's evaluations may be many minutes apart)."""
        t, w = self.cfg.train, self.window
        per_step = w.seconds / max(1, self.step - self.evaluated_at)
        self.log(f"step {self.step}/{t.max_steps}: loss {w.ce / max(1, w.tokens):.3f}, {per_step:.2f} s/step "
                 f"({w.tokens_per_s():.0f} tokens/s); at this pace {(t.max_steps - self.step) * per_step / 60:.0f} "
                 f"min of training steps left")
        self._line_at = time.perf_counter()

    def _end_epoch(self) -> None:
        t = self.cfg.train
        self.epoch, self.batch_pos = self.epoch + 1, 0
        last_epoch = t.max_epochs is not None and self.epoch >= t.max_epochs
        if t.eval_unit == "epochs" and self.epoch % t.eval_every == 0 and self.evaluated_at != self.step:
            self._checkpoint_and_report(M.COMPLETED if last_epoch else M.RUNNING)

    def _diverged(self) -> RunResult:
        """A non-finite loss: the parameters are those of the last good step; the last checkpoint stays."""
        reason = self.divergence or f"non-finite loss at step {self.step + 1}"
        self.log(f"diverged: {reason}; the last good checkpoint is {self.last_checkpoint}")
        record = {M.STEP: self.step, M.EPOCH: self.epoch, M.STATUS: M.DIVERGED, M.LOSS: float("nan"), M.REASON: reason}
        if self.report is not None:
            self.report(record, None)
        self._write_status(M.DIVERGED, {"reason": reason, "last_checkpoint":
                                        str(self.last_checkpoint) if self.last_checkpoint else None})
        return RunResult(M.DIVERGED, self.step, record, self.last_checkpoint, self.out_dir, self.history)

    def run(self) -> RunResult:
        """Train until ``max_steps``, ``max_epochs`` or ``max_minutes``, evaluating and checkpointing on the way."""
        t = self.cfg.train
        self.model.train()
        self.history, self.last_metrics, self.last_checkpoint = [], {}, None
        self.window, self.evaluated_at = LossWindow(), self.step
        self.log_window = getattr(self, "resumed_log_window", None) or LossWindow()
        self._wall_start, self._wall_base = time.perf_counter(), self.wall_seconds
        self._line_at = self._wall_start
        self._write_status(M.RUNNING)
        progress = self._progress_bar()
        ended = None
        while ended is None and self.step < t.max_steps and (t.max_epochs is None or self.epoch < t.max_epochs):
            ended, epoch_done = self._run_epoch(progress)
            if ended != M.DIVERGED and epoch_done:
                self._end_epoch()
        if progress is not None:
            progress.close()
        if ended == M.DIVERGED:
            return self._diverged()
        if ended == "timed_out":
            self.log(f"train.max_minutes={t.max_minutes} reached at step {self.step}")
        if self.evaluated_at != self.step or not self.last_metrics:
            self._checkpoint_and_report(M.COMPLETED)  # stopped by max_epochs or max_minutes, or resumed at the end
        self._write_status(M.COMPLETED, {
            "last_checkpoint": str(self.last_checkpoint), "best_checkpoint": str(self.best_checkpoint),
            "best_bleu": self.best_bleu, "metrics": self.last_metrics,
        })
        return RunResult(M.COMPLETED, self.step, self.last_metrics, self.last_checkpoint, self.out_dir, self.history)


def train(
    cfg: Config,
    out_dir: str | Path,
    report: ReportFn | None = None,
    resume: bool = False,
    init_from: str | Path | None = None,
    log: Callable[[str], None] = print,
    teacher: str | Path | None = None,
    on_log: LogFn | None = None,
) -> RunResult:
    """Train (or, with ``resume``, continue) one run in ``out_dir``; see :class:`Trainer`. ``teacher``: the
    checkpoint distillation learns from (default: distill.teacher); ``on_log``: called with every training-log
    record (train.log_every)."""
    return Trainer(cfg, out_dir, report=report, resume=resume, init_from=init_from, log=log, teacher=teacher,
                   on_log=on_log).run()


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
    if result.status == M.DIVERGED:
        print(f"run diverged at step {result.step}; see {result.out_dir / STATUS_FILE}", file=sys.stderr)
        return 1
    m = result.metrics
    print(f"final: step {result.step}  BLEU {m[M.BLEU]:.2f}  chrF {m[M.CHRF]:.2f}  "
          f"open heads {m[M.OPEN_HEADS]}  checkpoint {result.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
