import json
import math

import pytest
import torch

from model import metrics as M
from model.budget import CLOSED_LOG_ALPHA
from model.checkpoint import CheckpointError, checkpoint_config, load_checkpoint
from model.config import ConfigError, TrainConfig, save_config
from model.data import SyntheticCorpus
from model.evaluate import score
from model.train import STATUS_FILE, TrainingError, learning_rate, main, train
from model.transformer import Transformer
from tests.helpers import LEARN, QUIET, Interrupt, interrupt_then_resume, state_of, tiny_config


def test_resume_equals_unbroken_run(tmp_path, record):
    """Killed after the step-3 checkpoint and resumed, a run ends bitwise where the unbroken run ends,
    across an epoch boundary, with dropout, gate noise, an L0 penalty and gradient accumulation."""
    cfg = tiny_config("gates.mode=learned", "gates.penalty=0.05", "gates.attention=[enc_self, dec_cross]",
                      "data.batch_size=50", "data.max_tokens=null", "train.accumulation=2",
                      "train.max_steps=8", "train.eval_every=3")
    full = train(cfg, tmp_path / "full", **QUIET)
    assert full.step == 8 and full.status == "completed"

    resumed = interrupt_then_resume(cfg, tmp_path / "broken", lambda m: m[M.STEP] == 3)
    assert resumed.step == 8
    a, b = state_of(full.checkpoint), state_of(resumed.checkpoint)
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, differing
    assert resumed.metrics[M.BLEU] == full.metrics[M.BLEU]
    assert resumed.metrics[M.L0] == full.metrics[M.L0]
    # the metrics log of the resumed run has each evaluation once, as the unbroken one
    steps = [json.loads(line)[M.STEP] for line in (tmp_path / "broken" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [3, 6, 8]
    record("training interrupted after a checkpoint, then resumed (dropout, gate noise, accumulation)",
           tensors_compared=len(a), tensors_differing_from_unbroken=len(differing))


def test_report_receives_shared_metric_names_and_a_checkpoint(tmp_path):
    seen = []

    def report(metrics, checkpoint):
        assert checkpoint.exists()
        seen.append(metrics)

    cfg = tiny_config("gates.mode=learned", "gates.penalty=0.1")
    result = train(cfg, tmp_path, report=report, **QUIET)
    assert [m[M.STEP] for m in seen] == [3, 6]
    for key in (M.BLEU, M.CHRF, M.OPEN_HEADS, M.L0, M.PENALTY, M.LOSS, M.LR, M.VALID_NLL, M.TOKENS_PER_S,
                M.open_heads_key("enc_self")):
        assert key in seen[-1]
    assert seen[-1][M.STATUS] == "completed" and seen[0][M.STATUS] == "running"
    assert seen[-1][M.OPEN_HEADS] == 24  # 2 enc + 2 dec self + 2 dec cross blocks, 4 heads each
    status = json.loads((tmp_path / STATUS_FILE).read_text())
    assert status["status"] == "completed" and status["step"] == 6
    gates = [json.loads(line) for line in (tmp_path / "gates.jsonl").read_text().splitlines()]
    assert len(gates[-1]["gates"]["enc_self"]["gate"]) == 2
    samples = json.loads((tmp_path / "samples.jsonl").read_text().splitlines()[-1])
    assert len(samples["samples"]) == 2 and samples["bleu_signature"].startswith("nrefs:1")
    assert result.checkpoint.name == "step_00000006.pt"


def test_checkpoint_holds_everything_needed(tmp_path):
    result = train(tiny_config(), tmp_path, **QUIET)
    payload = load_checkpoint(result.checkpoint)
    for key in ("model", "optimizer", "scaler", "counters", "rng", "config", "tokenizers", "versions", "git_commit"):
        assert key in payload
    assert payload["counters"]["step"] == 6
    assert payload["config"]["train"]["max_steps"] == 6


def test_diverged_run_stops_cleanly(tmp_path, monkeypatch, record):
    real_loss = Transformer.loss
    calls = {"n": 0}

    def flaky(self, *args, **kw):
        out = real_loss(self, *args, **kw)
        calls["n"] += 1
        if self.training and calls["n"] > 4:
            out.ce_sum = out.ce_sum * float("nan")
        return out

    monkeypatch.setattr(Transformer, "loss", flaky)
    reports = []
    cfg = tiny_config("train.max_steps=20", "train.eval_every=2", "eval.max_sentences=2")
    result = train(cfg, tmp_path, report=lambda m, c: reports.append((m, c)), **QUIET)
    assert result.status == "diverged"
    assert reports[-1][0][M.STATUS] == "diverged" and reports[-1][1] is None
    status = json.loads((tmp_path / STATUS_FILE).read_text())
    assert status["status"] == "diverged" and "non-finite" in status["reason"]
    last = load_checkpoint(status["last_checkpoint"])  # the last good checkpoint is intact
    finite = all(torch.isfinite(v).all() for v in last["model"].values())
    assert finite
    record("NaN loss in a single run", stopped_as_diverged=int(result.status == "diverged"),
           last_checkpoint_finite=int(finite), reports_after_divergence=len(reports) - 1 - next(
               i for i, (m, _) in enumerate(reports) if m[M.STATUS] == "diverged"))


def test_freeze_decoder_while_gates_learn_from_a_plain_model(tmp_path):
    """The prune-stage setting: a plain model's weights, gates on, decoder frozen."""
    base = train(tiny_config(), tmp_path / "base", **QUIET)
    cfg = tiny_config("gates.mode=learned", "gates.penalty=0.5", "train.freeze=[decoder, embeddings]",
                      "model.tie_output=false")
    with pytest.raises(Exception, match="model settings differ.*tie_output"):
        train(cfg, tmp_path / "bad", init_from=base.checkpoint, **QUIET)
    cfg = tiny_config("gates.mode=learned", "gates.penalty=0.5", "train.freeze=[decoder, embeddings]")
    pruned = train(cfg, tmp_path / "prune", init_from=base.checkpoint, **QUIET)
    before, after = state_of(base.checkpoint), state_of(pruned.checkpoint)
    for k, v in before.items():
        if k.startswith(("decoder.", "decoder_norm", "output", "src_embed", "tgt_embed")):
            assert torch.equal(v, after[k]), f"frozen {k} changed"
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    alphas = [v for k, v in after.items() if k.endswith("log_alpha")]
    assert alphas and all(not torch.all(a == cfg.gates.init_log_alpha) for a in alphas)


def test_resume_refuses_what_would_silently_fail(tmp_path, record):
    cfg = tiny_config()
    train(cfg, tmp_path / "run", **QUIET)
    before = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    refused = 0
    for run_cfg, folder, resume, message in ((cfg, "empty", True, "no checkpoint"),
                                              (cfg, "run", False, "already holds checkpoints"),
                                              (tiny_config("train.lr=0.01"), "run", True, r"train\.lr: 0\.003 -> 0\.01")):
        with pytest.raises(TrainingError, match=message):
            train(run_cfg, tmp_path / folder, resume=resume, **QUIET)
        refused += 1
    untouched = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == before
    assert untouched
    longer = train(tiny_config("train.max_steps=9"), tmp_path / "run", resume=True, **QUIET)
    assert longer.step == 9
    record("resume with no checkpoint, over a finished run, with a changed config", refused=refused,
           checkpoints_untouched=int(untouched))


def test_resume_of_a_checkpoint_without_the_gate_learning_rate_scale(tmp_path):
    """Checkpoints of earlier versions store optimizer groups without ``lr_scale``: resuming them takes the scale
    from the config (the gates' group learns ``gates.lr_scale`` times faster), ending where an unbroken run ends."""
    cfg = tiny_config("gates.mode=learned", "gates.penalty=0.05", "gates.lr_scale=10.0", "train.max_steps=6",
                      "train.eval_every=3")
    full = train(cfg, tmp_path / "full", **QUIET)
    with pytest.raises(Interrupt):
        train(cfg, tmp_path / "old", report=lambda m, c: (_ for _ in ()).throw(Interrupt()), **QUIET)
    (path,) = (tmp_path / "old" / "checkpoints").glob("step_*.pt")
    payload = torch.load(path, weights_only=True)
    for group in payload["optimizer"]["param_groups"]:
        del group["lr_scale"]
    torch.save(payload, path)
    resumed = train(cfg, tmp_path / "old", resume=True, **QUIET)
    assert resumed.step == 6
    a, b = state_of(full.checkpoint), state_of(resumed.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fused_adam_makes_the_per_tensor_update_and_resumes_its_checkpoints(tmp_path, monkeypatch):
    """Training uses PyTorch's fused Adam, which makes the per-tensor loop's update up to float rounding; a run
    begun with the per-tensor Adam (checkpoints of earlier versions) resumes with its optimizer state and goes on
    with the implementation its checkpoint names, so it stays bitwise resumable."""
    import model.train as T

    torch.manual_seed(0)
    start = [torch.randn(16, 8), torch.randn(8)]
    steps = [[torch.randn_like(p) for p in start] for _ in range(5)]
    ends = []
    for fused in (None, True):
        params = [p.clone().requires_grad_() for p in start]
        opt = torch.optim.Adam(params, lr=1e-2, betas=(0.9, 0.98), weight_decay=0.01, fused=fused)
        for grads in steps:
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
        ends.append(params)
    for a, b in zip(*ends):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert T.fused_adam(ends[1]) is True

    cfg = tiny_config("gates.mode=learned", "gates.penalty=0.05", "train.max_steps=6", "train.eval_every=3")
    monkeypatch.setattr(T, "fused_adam", lambda params: None)  # the per-tensor loop, as before
    with pytest.raises(Interrupt):
        train(cfg, tmp_path / "old", report=lambda m, c: (_ for _ in ()).throw(Interrupt()), **QUIET)
    (path,) = (tmp_path / "old" / "checkpoints").glob("step_*.pt")
    assert not any(g["fused"] for g in torch.load(path, weights_only=True)["optimizer"]["param_groups"])
    monkeypatch.undo()
    resumed = train(cfg, tmp_path / "old", resume=True, **QUIET)
    assert resumed.step == 6
    optimizer = torch.load(resumed.checkpoint, weights_only=True)["optimizer"]
    assert {float(s["step"]) for s in optimizer["state"].values()} == {6.0}  # 3 steps before, 3 after: state kept
    assert not any(g["fused"] for g in optimizer["param_groups"])  # it goes on as it began: bitwise resumable
    fresh = train(cfg, tmp_path / "new", **QUIET)
    assert all(g["fused"] is True for g in torch.load(fresh.checkpoint, weights_only=True)["optimizer"]["param_groups"])


def test_max_epochs_stops_and_evaluates(tmp_path):
    cfg = tiny_config("data.batch_size=200", "data.max_tokens=null", "train.max_epochs=2", "train.max_steps=100",
                      "train.eval_every=100")
    result = train(cfg, tmp_path, **QUIET)
    assert result.step == 4 and result.metrics[M.EPOCH] == 2


def test_evaluation_every_epoch_resumes_exactly(tmp_path):
    cfg = tiny_config("data.batch_size=100", "data.max_tokens=null", "train.eval_unit=epochs", "train.eval_every=1",
                      "train.max_steps=10", "gates.mode=learned")
    seen = []
    full = train(cfg, tmp_path / "full", report=lambda m, c: seen.append((m[M.STEP], m[M.EPOCH])), **QUIET)
    assert seen == [(4, 1), (8, 2), (10, 2)]  # 4 batches an epoch, and the end of the run

    resumed = interrupt_then_resume(cfg, tmp_path / "broken", lambda m: m[M.EPOCH] == 1)
    a, b = state_of(full.checkpoint), state_of(resumed.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("schedule", ["noam", "inverse_sqrt", "constant", "cosine"])
def test_learning_rate_schedules(schedule):
    t = TrainConfig(schedule=schedule, lr=1e-3, warmup_steps=10, max_steps=100, min_lr=1e-5)
    lrs = [learning_rate(s, t, d_model=64) for s in range(1, 101)]
    assert all(lr > 0 for lr in lrs)
    assert lrs[:10] == sorted(lrs[:10])  # warm-up rises
    if schedule == "noam":
        assert lrs[9] == pytest.approx(1e-3 * 64**-0.5 * 10**-0.5)
    elif schedule == "cosine":
        assert lrs[9] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-5)
    else:
        assert lrs[9] == pytest.approx(1e-3)
    if schedule == "inverse_sqrt":
        assert lrs[39] == pytest.approx(1e-3 * math.sqrt(10 / 40))


def test_loop_learns_the_synthetic_pair(trained_run):
    """A short CPU run translates held-out sentences far better than copying the source."""
    cfg = tiny_config(*LEARN)
    src, ref = SyntheticCorpus(cfg.data).split("valid")
    copy_bleu = score(src[:100], ref[:100]).bleu
    assert copy_bleu < 5
    assert trained_run.metrics[M.BLEU] > copy_bleu + 40, trained_run.metrics


def test_cli_reports_config_errors_and_runs(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: -1\n")
    assert main([str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "train.lr" in capsys.readouterr().err
    good = tmp_path / "good.yaml"
    save_config(tiny_config(), good)
    assert main([str(good), "--out", str(tmp_path / "run"), "--set", "train.max_steps=3",
                 "--data-dir", str(tmp_path / "corpora")]) == 0
    assert f"data_dir: {tmp_path / 'corpora'}" in (tmp_path / "run" / "config.yaml").read_text()
    assert "final: step 3" in capsys.readouterr().out
    assert main([str(good), "--out", str(tmp_path / "run")]) == 2  # exists, no --resume
    assert "--resume" in capsys.readouterr().err
    # resume with the run's own config, extended by an override
    assert main(["--out", str(tmp_path / "run"), "--resume", "--set", "train.max_steps=5"]) == 0
    assert "final: step 5" in capsys.readouterr().out


def test_accumulated_micro_batches_equal_one_big_batch(tmp_path):
    """Gradient accumulation normalises by the tokens of the whole step, not of each micro-batch."""
    from model.data import collate
    from model.train import Trainer

    cfg = tiny_config("model.dropout=0.0", "train.grad_clip=null")
    a = Trainer(cfg, tmp_path / "a", **QUIET)
    b = Trainer(cfg, tmp_path / "b", **QUIET)
    split = a.data.splits["train"]
    first, second = list(range(0, 6)), list(range(6, 15))  # different lengths and token counts
    a._train_step([collate(split, first), collate(split, second)])
    b._train_step([collate(split, first + second)])
    # compare gradients (Adam's first step is lr * sign(g), which would blow up noise in zero gradients)
    for (name, pa), pb in zip(a.model.named_parameters(), b.model.parameters()):
        assert torch.allclose(pa.grad, pb.grad, rtol=1e-4, atol=1e-6), name


def test_bf16_autocast_runs_on_cpu_and_resumes_exactly(tmp_path):
    """train.precision bf16 on a CPU (AMX or AVX-512 BF16 make its matrix products several times faster there):
    finite losses, fp32 weights, and a run resumed after a checkpoint ends bitwise where the unbroken one ends."""
    cfg = tiny_config("train.precision=bf16", "gates.mode=learned", "gates.penalty=0.1", "train.max_steps=4",
                      "train.eval_every=2")
    result = train(cfg, tmp_path / "full", **QUIET)
    assert result.status == "completed" and math.isfinite(result.metrics[M.VALID_NLL])
    resumed = interrupt_then_resume(cfg, tmp_path / "broken", lambda m: m[M.STEP] == 2)
    a, b = state_of(result.checkpoint), state_of(resumed.checkpoint)
    assert all(t.dtype != torch.bfloat16 for t in a.values() if torch.is_tensor(t))
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


BUDGET = ("gates.mode=learned", "gates.target_open=3", "gates.target_fix_at=0.5", "gates.lr=0.1",
          "gates.lagrangian_lr=0.05", "train.max_steps=12", "train.eval_every=4")


@pytest.mark.parametrize("stop_at", [4, 8])
def test_head_budget_ends_with_exactly_the_target_and_resumes_exactly(tmp_path, stop_at):
    """gates.target_open: the Lagrangian constraint pushes while the gates prune (its multipliers move), every
    evaluation keeps exactly the target heads (the top-k of log_alpha), the penalty lambda stays 0, and from
    target_fix_at x max_steps the same heads stay kept, the constraint off; killed before or after that point, a
    resumed run ends bitwise where the unbroken one does."""
    cfg = tiny_config(*BUDGET)
    full = train(cfg, tmp_path / "full", **QUIET)
    assert [m[M.open_heads_key("enc_self")] for m in full.history] == [3, 3, 3]
    assert all(m[M.LAMBDA] == 0.0 for m in full.history)
    first, fixed, last = full.history
    assert first[M.LAMBDA1] < 0 < first[M.LAMBDA2]  # too many heads open: the constraint pushes them to close
    assert (fixed[M.LAMBDA1], fixed[M.LAMBDA2]) == (last[M.LAMBDA1], last[M.LAMBDA2])  # off after the fix step
    assert first[M.TARGET_OPEN] == pytest.approx(3.0) and first[M.EXPECTED_OPEN] > 3.0
    records = [json.loads(line) for line in (tmp_path / "full" / "gates.jsonl").read_text().splitlines()]
    before = sorted(((a, i) for i, a in enumerate(a for layer in records[0]["gates"]["enc_self"]["log_alpha"]
                                                  for a in layer)), key=lambda x: (-x[0], x[1]))
    assert records[0]["kept"]["all"] == [i for _, i in before[:3]]  # the top-k of log_alpha, ties to the first
    after = [a for layer in records[2]["gates"]["enc_self"]["log_alpha"] for a in layer]
    assert sum(a == CLOSED_LOG_ALPHA for a in after) == 5 and sorted(records[1]["kept"]["all"]) == sorted(records[2]["kept"]["all"])
    assert sorted(i for i, a in enumerate(after) if a != CLOSED_LOG_ALPHA) == sorted(records[2]["kept"]["all"])

    resumed = interrupt_then_resume(cfg, tmp_path / "broken", lambda m: m[M.STEP] == stop_at)
    a, b = state_of(full.checkpoint), state_of(resumed.checkpoint)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [m[M.LAMBDA1] for m in resumed.history] == [m[M.LAMBDA1] for m in full.history][stop_at // 4:]


def test_a_budget_per_attention_type_keeps_each_types_target(tmp_path):
    cfg = tiny_config("gates.mode=learned", "gates.attention=[enc_self, dec_cross]",
                      "gates.target_open={enc_self: 2, dec_cross: 5}", "gates.target_fix_at=0.5", "gates.lr=0.1",
                      "train.max_steps=6", "train.eval_every=3")
    result = train(cfg, tmp_path, **QUIET)
    for m in result.history:
        assert (m[M.open_heads_key("enc_self")], m[M.open_heads_key("dec_cross")]) == (2, 5)
        assert {M.LAMBDA1 + "/enc_self", M.LAMBDA1 + "/dec_cross", M.TARGET_OPEN + "/dec_cross"} <= set(m)
    assert result.history[-1][M.open_heads_key("dec_self")] == 8  # ungated: all its heads


def test_the_constraints_multipliers_push_toward_the_target_from_either_side():
    """lambda1 falls (more pressure to close) while more heads are expected open than the target, rises while
    fewer are; lambda2 only grows; the target warms up linearly from no head closed."""
    from model.budget import HeadBudget
    from model.transformer import Transformer

    for init, target, sign in ((4.0, 2, -1), (-4.0, 7, 1)):
        cfg = tiny_config("gates.mode=learned", f"gates.init_log_alpha={init}", f"gates.target_open={target}",
                          "gates.target_warmup=0.5", "gates.lagrangian_lr=0.1", "train.max_steps=20")
        model = Transformer(cfg.model, 50, 50, cfg.gates)
        budget = HeadBudget(model, cfg.gates, cfg.model, cfg.train.max_steps)
        assert budget.fix_step == 15 and budget.warmup_steps == 8
        assert budget.target_closed(4).item() == pytest.approx(0.5 * (1 - target / 8))
        assert budget.target_closed(12).item() == pytest.approx(1 - target / 8)
        for step in range(10, 13):
            budget.term(step).backward()
            budget.ascend()
        lambda1, lambda2 = budget.lambdas.detach()[:, 0].tolist()
        assert math.copysign(1, lambda1) == sign and lambda2 > 0, (init, lambda1, lambda2)
        with budget.top_k():
            assert model.open_heads()["enc_self"] == target  # what an evaluation scores
        assert model.open_heads()["enc_self"] == (8 if init > 0 else 0)  # and the gates come back


def test_heads_kept_at_the_fix_step_are_raised_to_the_open_initialisation():
    """A budget that overshot its target has to choose its top-k among nearly closed heads: while pruning, an
    evaluation counts them open at their own gates (at least OPEN_LOG_ALPHA); from the fix step on they are held
    at least at gates.init_log_alpha, a head already above it keeps its own value, and every other head is closed."""
    from model.budget import OPEN_LOG_ALPHA, HeadBudget

    cfg = tiny_config("gates.mode=learned", "gates.target_open=3", "gates.target_fix_at=0.5", "train.max_steps=20")
    model = Transformer(cfg.model, 50, 50, cfg.gates)
    budget = HeadBudget(model, cfg.gates, cfg.model, cfg.train.max_steps)
    alphas = [-3.5, -2.5, -4.0, 5.0, -5.0, -3.0, -6.0, -7.0]  # one of the top 3 open, two nearly closed
    gates = [gate for kind, _, gate in model.gates() if kind == "enc_self"]
    sizes = [g.log_alpha.numel() for g in gates]
    with torch.no_grad():
        for gate, values in zip(gates, torch.tensor(alphas).split(sizes), strict=True):
            gate.log_alpha.copy_(values)
    flat = lambda: [a for g in gates for a in g.log_alpha.detach().tolist()]  # noqa: E731
    with budget.top_k():
        assert flat() == [-20.0, OPEN_LOG_ALPHA, -20.0, 5.0, -20.0, OPEN_LOG_ALPHA, -20.0, -20.0]
    budget.after_step(budget.fix_step - 1)  # still pruning: nothing is fixed
    assert flat() == alphas
    budget.after_step(budget.fix_step)
    init = cfg.gates.init_log_alpha
    assert flat() == [-20.0, init, -20.0, 5.0, -20.0, init, -20.0, -20.0]
    evaluation = torch.cat([g.eval_gates() for g in gates])
    assert model.open_heads()["enc_self"] == 3 and evaluation[[1, 3, 5]].min().item() > 0.9


def test_a_checkpoint_trained_with_the_old_budget_controller_is_refused_with_the_reason(tmp_path):
    """The exponential lambda controller (gates.target_gain) is gone: a run that used it is refused on resume,
    saying why; a checkpoint that only carries the old key at its default (no budget) still loads."""
    def stop(metrics, checkpoint):
        raise Interrupt

    cfg = tiny_config(*BUDGET)
    with pytest.raises(Interrupt):
        train(cfg, tmp_path / "budget", report=stop, **QUIET)
    plain = train(tiny_config("train.max_steps=2", "train.eval_every=2"), tmp_path / "plain", **QUIET)
    for run in (tmp_path / "budget", tmp_path / "plain"):
        (path,) = (run / "checkpoints").glob("step_*.pt")
        payload = torch.load(path, weights_only=True)
        payload["config"]["gates"]["target_gain"] = 0.05  # as every checkpoint of the earlier version stored it
        torch.save(payload, path)
    with pytest.raises((ConfigError, CheckpointError), match="gates.target_gain` is no longer a setting: the head "
                       "budget's exponential lambda controller was replaced by a Lagrangian constraint"):
        train(cfg, tmp_path / "budget", resume=True, **QUIET)
    assert load_checkpoint(plain.checkpoint)["config"]["gates"]["target_gain"] == 0.05
    assert checkpoint_config(load_checkpoint(plain.checkpoint)).gates.target_open is None


def test_gates_lr_is_the_gate_groups_own_peak_learning_rate(tmp_path):
    from model.train import Trainer

    cfg = tiny_config("gates.mode=learned", "train.lr=2e-3", "gates.lr=0.1", "train.max_steps=2")
    trainer = Trainer(cfg, tmp_path / "run", **QUIET)
    weights, gates = trainer.optimizer.param_groups
    assert weights["lr_scale"] == 1.0 and math.isclose(gates["lr_scale"] * cfg.train.lr, 0.1)
    trainer.run()
    assert math.isclose(gates["lr"], 0.1 * learning_rate(2, cfg.train, cfg.model.d_model) / cfg.train.lr)
    with pytest.raises(Exception, match="gates.lr_scale"):
        tiny_config("gates.mode=learned", "gates.lr=0.1", "gates.lr_scale=5.0")


def _small_gate_run(tmp_path, *overrides):
    """A run whose encoder gates sit at 0.043 (log_alpha -2: open, tiny) and barely move in 2 steps."""
    cfg = tiny_config("gates.mode=learned", "gates.init_log_alpha=-2.0", "gates.lr=1e-9", "train.max_steps=2",
                      "train.eval_every=2", *overrides)
    return train(cfg, tmp_path, **QUIET)


def test_heads_with_tiny_gates_are_removed_at_the_end_when_that_costs_no_bleu(tmp_path):
    from model.checkpoint import checkpoint_config
    from model.prune import prune_checkpoint

    gated = 2 * 4  # tiny config: 2 encoder layers x 4 heads
    kept = _small_gate_run(tmp_path / "off", "gates.min_open=0.0")
    assert kept.metrics[M.OPEN_HEADS + "/enc_self"] == gated and kept.metrics[M.SMALL_HEADS_CLOSED] == 0
    removed = _small_gate_run(tmp_path / "on", "gates.min_open=0.1", "gates.min_open_tolerance=100.0")
    assert removed.metrics[M.SMALL_HEADS_CLOSED] == gated and removed.metrics[M.OPEN_HEADS + "/enc_self"] == 0
    assert removed.metrics[M.BLEU_WITH_SMALL_HEADS] == kept.metrics[M.BLEU]  # the same run until the end
    _, pruned = prune_checkpoint(removed.checkpoint, tmp_path / "pruned.pt")  # the checkpoint agrees with the count
    assert pruned.cfg.heads["enc_self"] == [0, 0]
    assert checkpoint_config(load_checkpoint(removed.checkpoint)).gates.min_open == 0.1


def test_heads_with_tiny_gates_stay_when_removing_them_costs_bleu(tmp_path, monkeypatch):
    from model.train import Trainer

    scores = iter([50.0, 40.0])  # with them, then without them
    original = Trainer.evaluate

    def evaluate(self):
        metrics, details = original(self)
        return {**metrics, M.BLEU: next(scores)}, details

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    result = _small_gate_run(tmp_path, "gates.min_open=0.1", "gates.min_open_tolerance=5.0")
    assert result.metrics[M.SMALL_HEADS_CLOSED] == 0 and result.metrics[M.BLEU] == 50.0
    assert result.metrics[M.OPEN_HEADS + "/enc_self"] == 8
    alphas = [v for k, v in load_checkpoint(result.checkpoint)["model"].items() if k.endswith("log_alpha")]
    assert alphas and all(torch.allclose(a, torch.full_like(a, -2.0), atol=1e-4) for a in alphas)  # restored


def test_a_non_finite_gradient_with_a_finite_loss_never_reaches_the_weights(tmp_path, record):
    """A NaN in one parameter's gradient from step 3 on, the loss finite: the run ends as diverged at step 3, the
    weights stay those of step 2, and the last checkpoint (step 2) holds only finite values."""
    from model.train import Trainer

    cfg = tiny_config("train.max_steps=6", "train.eval_every=2", "train.grad_clip=1.0")
    trainer = Trainer(cfg, tmp_path, **QUIET)
    param = next(p for p in trainer.model.parameters() if p.requires_grad)
    calls = {"backward": 0}

    def poison(grad):
        calls["backward"] += 1
        return grad * math.nan if trainer.step >= 2 else grad

    param.register_hook(poison)
    result = trainer.run()
    assert result.status == "diverged" and result.step == 2 and calls["backward"] >= 3
    assert "non-finite gradient at step 3 (the loss was finite" in result.metrics[M.REASON]
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert result.checkpoint.name == "step_00000002.pt"
    assert all(torch.isfinite(v).all() for v in state_of(result.checkpoint).values() if v.is_floating_point())
    status = json.loads((tmp_path / STATUS_FILE).read_text())
    assert status["status"] == "diverged" and "non-finite gradient" in status["reason"]
    record("NaN in one parameter's gradient from step 3 on, the loss finite, gradient clipping on",
           poisoned_backward_passes=calls["backward"] - 2,
           stopped_at_step=int(result.metrics[M.REASON].split("at step ")[1].split()[0]),
           non_finite_weights=sum(int((~torch.isfinite(p)).sum()) for p in trainer.model.parameters()),
           last_checkpoint_step=int(result.checkpoint.stem.split("_")[1]),
           non_finite_in_last_checkpoint=sum(int((~torch.isfinite(v)).sum()) for v in
                                             state_of(result.checkpoint).values() if v.is_floating_point()))


def test_a_head_budget_run_resumed_with_another_length_is_refused(tmp_path, record):
    """Under gates.target_open the kept heads are fixed at target_fix_at x max_steps: resuming with another
    max_steps would move that step, so it is refused, naming the key; the same length resumes."""
    cfg = tiny_config("gates.mode=learned", "gates.target_open=3", "train.max_steps=8", "train.eval_every=2")

    def stop(metrics, checkpoint):
        if metrics[M.STEP] == 4:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(cfg, tmp_path, report=stop, **QUIET)
    before = {f: f.stat().st_mtime_ns for f in tmp_path.rglob("*") if f.is_file()}
    refused = 0
    for steps in (12, 6):  # longer and shorter
        other = tiny_config("gates.mode=learned", "gates.target_open=3", f"train.max_steps={steps}",
                            "train.eval_every=2")
        with pytest.raises(TrainingError, match=rf"train.max_steps: 8 -> {steps} \(the head budget fixes its heads"):
            train(other, tmp_path, resume=True, **QUIET)
        refused += 1
    changed = sum(f.stat().st_mtime_ns != t for f, t in before.items() if f.exists()) + sum(
        not f.exists() for f in before)
    assert changed == 0  # a refused resume writes nothing
    resumed = train(cfg, tmp_path, resume=True, **QUIET)
    assert resumed.status == "completed" and resumed.metrics[M.OPEN_HEADS + "/enc_self"] == 3
    record("resume of a head-budget run (gates.target_open) with another train.max_steps, longer and shorter",
           refused=refused, files_changed_by_refusals=changed, resumed_with_same_length=int(resumed.step == 8),
           heads_open_at_end=int(resumed.metrics[M.OPEN_HEADS + "/enc_self"]))


def test_a_run_without_a_progress_bar_logs_where_it_is(tmp_path, monkeypatch):
    """Sweep trials train without a progress bar and may evaluate minutes apart: a line says the step, the pace
    and what is left, and the steps it names only go forward."""
    import model.train as train_module

    monkeypatch.setattr(train_module, "PROGRESS_LINE_SECONDS", 0.0)
    lines = []
    train(tiny_config("train.max_steps=6", "train.eval_every=3"), tmp_path, log=lines.append)
    progress = [line for line in lines if "s/step" in line]
    steps = [int(line.split("/")[0].split()[-1]) for line in progress]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert all(line.startswith(f"step {s}/6: loss ") and "min of training steps left" in line
               for s, line in zip(steps, progress))
    assert float(progress[0].split("loss ")[1].split(",")[0]) > 0


def test_the_training_log_records_every_log_every_steps_and_resumes_without_gaps_or_repeats(tmp_path):
    """train.log_every: a record of the steps since the previous one (loss, learning rates, the head budget's
    multipliers and targets, tokens/s) in train_log.jsonl and to on_log; a resumed run's log is the unbroken
    run's, step for step."""
    from model.train import TRAIN_LOG_FILE

    cfg = tiny_config(*BUDGET, "train.log_every=3")  # a record's steps cross the checkpoint at step 4
    seen = []
    full = train(cfg, tmp_path / "full", on_log=seen.append, **QUIET)
    records = [json.loads(line) for line in (tmp_path / "full" / TRAIN_LOG_FILE).read_text().splitlines()]
    assert records == seen and [r[M.STEP] for r in records] == [3, 6, 9, 12]
    keys = {"train/loss", "train/nll", "train/lr", "train/lr_gates", "train/tokens_per_s", "train/lambda1",
            "train/lambda2", "train/expected_open", "train/target_open"}
    assert all(keys <= set(r) for r in records), records[0]
    assert records[0]["train/lr_gates"] != records[0]["train/lr"]  # gates.lr: their own rate
    assert [r["train/target_open"] for r in records] == [3.0] * 4  # warmed up over the first 3 steps
    assert records[0]["train/lambda1"] != records[-1]["train/lambda1"]  # the multipliers move while pruning
    resumed = interrupt_then_resume(cfg, tmp_path / "broken", lambda m: m[M.STEP] == 4)
    again = [json.loads(line) for line in (tmp_path / "broken" / TRAIN_LOG_FILE).read_text().splitlines()]
    assert [r[M.STEP] for r in again] == [3, 6, 9, 12]
    for a, b in zip(records, again, strict=True):
        assert {k: v for k, v in a.items() if "per_s" not in k} == {k: v for k, v in b.items() if "per_s" not in k}
    assert resumed.step == full.step
