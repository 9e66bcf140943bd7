"""Distillation from the unpruned model: the loss it adds, the teacher it needs, and exact resume with it."""

import math

import pytest
import torch

from model import metrics as M
from model.checkpoint import CheckpointError, checkpoint_config, load_checkpoint, load_model_state
from model.config import DistillConfig
from model.data import collate, load_data, make_batches
from model.distill import distill_loss, load_teacher
from model.train import Trainer, TrainingError, train
from model.transformer import Transformer
from tests.helpers import QUIET, interrupt_then_resume, state_of, tiny_config

PLAIN = ("model.dropout=0.0", "train.max_steps=4", "train.eval_every=4")
DISTILL = ("model.dropout=0.0", "gates.mode=learned", "gates.penalty=0.05", "distill.weight=0.5",
           "distill.temperature=2.0", "distill.hidden_weight=0.1", "train.max_steps=8", "train.eval_every=4")


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory) -> str:
    """A plain tiny model trained for 4 steps: the unpruned model the tests distill from."""
    return str(train(tiny_config(*PLAIN), tmp_path_factory.mktemp("teacher"), **QUIET).checkpoint)


def a_batch(cfg):
    data = load_data(cfg.data, cfg.eval.split, lambda _: None)
    train_split = data.splits["train"]
    (first, *_) = make_batches(train_split.src_lengths, train_split.tgt_lengths, cfg.data.max_tokens,
                               cfg.data.batch_size, cfg.data.bucket_size, 1, 0)
    return data, collate(train_split, first)


def test_a_student_equal_to_its_teacher_has_no_distillation_loss_and_a_changed_one_has(teacher_path):
    cfg = tiny_config(*PLAIN)
    data, batch = a_batch(cfg)
    teacher = load_teacher(teacher_path, data.tokenizers, torch.device("cpu"))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    student = Transformer(cfg.model, len(data.tokenizers.src), len(data.tokenizers.tgt), cfg.gates)
    load_model_state(student, load_checkpoint(teacher_path)["model"])
    student.train()  # dropout 0: the same function as the teacher's
    d = DistillConfig(weight=0.5, temperature=2.0, hidden_weight=1.0)
    same = distill_loss(student, teacher, batch.src, batch.tgt_in, batch.tgt_out, 0.1, d)
    assert abs(float(same.kd_sum.detach())) < 1e-4 and float(same.hidden.detach()) < 1e-10 and same.n_tokens == batch.n_tokens
    with torch.no_grad():
        student.encoder[0].ffn.fc1.weight.add_(0.5 * torch.randn_like(student.encoder[0].ffn.fc1.weight))
    changed = distill_loss(student, teacher, batch.src, batch.tgt_in, batch.tgt_out, 0.1, d)
    assert float(changed.kd_sum.detach()) > 1e-3 and float(changed.hidden.detach()) > 1e-6
    (changed.kd_sum + changed.hidden).backward()
    assert student.encoder[0].ffn.fc1.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())


def test_a_distilled_run_learns_from_a_frozen_teacher_keeps_it_out_of_its_checkpoints_and_resumes_exactly(
        teacher_path, tmp_path):
    cfg = tiny_config(*DISTILL)
    full = train(cfg, tmp_path / "full", init_from=teacher_path, teacher=teacher_path, **QUIET)
    assert [m[M.STEP] for m in full.history] == [4, 8]
    assert all(math.isfinite(m[M.DISTILL_LOSS]) and m[M.DISTILL_LOSS] >= 0 for m in full.history)
    plain = train(tiny_config(*DISTILL, "distill.weight=0.0", "distill.hidden_weight=0.0"), tmp_path / "plain",
                  init_from=teacher_path, **QUIET)
    assert M.DISTILL_LOSS not in plain.metrics
    assert set(state_of(full.checkpoint)) == set(state_of(plain.checkpoint))  # no teacher weights in it
    assert any(not torch.equal(a, b) for a, b in zip(state_of(full.checkpoint).values(),
                                                     state_of(plain.checkpoint).values()))  # it changed the steps
    payload = load_checkpoint(full.checkpoint)
    assert not {k for k in payload if "teacher" in k} and checkpoint_config(payload).distill.teacher is None
    resumed = interrupt_then_resume(cfg, tmp_path / "broken", lambda m: m[M.STEP] == 4, init_from=teacher_path,
                                    teacher=teacher_path)
    a, b = state_of(full.checkpoint), state_of(resumed.checkpoint)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    trainer = Trainer(cfg, tmp_path / "again", init_from=teacher_path, teacher=teacher_path, **QUIET)
    before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    trainer.run()
    assert not trainer.teacher.training
    assert all(torch.equal(before[k], v) for k, v in trainer.teacher.state_dict().items())


def test_distillation_without_a_teacher_or_with_the_wrong_one_is_refused(teacher_path, tmp_path):
    with pytest.raises(TrainingError, match="distill.weight or distill.hidden_weight is set but there is no teacher"):
        Trainer(tiny_config(*DISTILL), tmp_path / "none", **QUIET)
    pruned = train(tiny_config(*PLAIN, "model.heads={enc_self: [2, 2]}"), tmp_path / "pruned", **QUIET)
    with pytest.raises(CheckpointError, match="the teacher must be an unpruned model"):
        Trainer(tiny_config(*DISTILL), tmp_path / "a", teacher=pruned.checkpoint, **QUIET)
    other = train(tiny_config(*PLAIN, "data.vocab_size=100"), tmp_path / "other", **QUIET)
    with pytest.raises(CheckpointError, match="its sentencepiece models differ from the run's"):
        Trainer(tiny_config(*DISTILL), tmp_path / "b", teacher=other.checkpoint, **QUIET)
    # named in the config instead of given by a sweep
    run = Trainer(tiny_config(*DISTILL, f"distill.teacher={teacher_path}"), tmp_path / "c", **QUIET)
    assert run.teacher is not None and not run.teacher.training
