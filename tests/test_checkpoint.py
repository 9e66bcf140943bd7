import os

import pytest
import torch

from model import checkpoint as ckpt
from model.checkpoint import CheckpointError, load_checkpoint, load_model_state
from model.config import GateConfig, ModelConfig
from model.files import atomic_write
from model.transformer import Transformer


class _Payload:
    """Unpickling this runs a shell command: what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_is_refused_and_never_runs(tmp_path, record):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "model": {}, "x": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="cannot be read safely") as refusal:
        load_checkpoint(path)
    code_ran = int(marker.exists())  # the payload's shell command would have created it
    assert code_ran == 0
    record("checkpoint whose pickle would run a shell command (torch.load with weights_only on)",
           refusals_naming_the_file=str(refusal.value).count(str(path)), code_ran=code_ran)


def test_missing_and_foreign_files_are_refused(tmp_path, record):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    (tmp_path / "truncated.pt").write_bytes(b"PK\x03\x04garbage")
    named, cases = 0, (("none.pt", "does not exist"), ("other.pt", "not a headsweep checkpoint"),
                    ("truncated.pt", "cannot be read safely"))
    for name, message in cases:
        with pytest.raises(CheckpointError, match=message) as refusal:
            load_checkpoint(tmp_path / name)
        named += str(tmp_path / name) in str(refusal.value)
    assert named == len(cases)
    record("missing, foreign and truncated checkpoint files", cases=len(cases), refusals_naming_the_file=named)


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch, record):
    path = tmp_path / "state.bin"
    atomic_write(path, b"old")

    def crash(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError):
        atomic_write(path, b"new" * 1000)
    intact = int(path.read_bytes() == b"old")
    left = [p.name for p in tmp_path.iterdir() if p.name != "state.bin"]  # temporary files left behind
    assert intact == 1 and left == []
    record("crash (ENOSPC from fsync) in the middle of a checkpoint write", old_file_intact=intact,
           temp_files_left=len(left))


def _model(gates=None, **kw):
    cfg = ModelConfig(d_model=16, n_heads=4, encoder_layers=1, decoder_layers=1, d_ff=32, **kw)
    return Transformer(cfg, 30, 30, gates)


def test_plain_state_loads_into_gated_model_with_initial_gates():
    plain = _model()
    gated = _model(GateConfig(mode="learned", attention=["enc_self", "dec_cross"], init_log_alpha=3.0))
    load_model_state(gated, plain.state_dict())
    assert torch.equal(gated.encoder[0].self_attn.qkv.weight, plain.encoder[0].self_attn.qkv.weight)
    assert all(torch.all(g.log_alpha == 3.0) for _, _, g in gated.gates())


def _wider():
    return Transformer(ModelConfig(d_model=32, n_heads=4, encoder_layers=1, decoder_layers=1, d_ff=32), 30, 30)


def test_architecture_mismatch_is_refused_with_the_keys():
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_model_state(_model(), _wider().state_dict())
    with pytest.raises(CheckpointError, match="unexpected .*gate.log_alpha"):
        load_model_state(_model(), _model(GateConfig(mode="learned")).state_dict())
    with pytest.raises(CheckpointError, match="missing .*encoder_norm"):
        load_model_state(_model(), _model(norm="post").state_dict())


def test_provenance_is_recorded():
    versions = ckpt.package_versions()
    assert versions["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert {"python", "sentencepiece", "sacrebleu"} <= set(versions)


def test_every_torch_load_in_the_project_is_weights_only(record):
    """The one reader of checkpoint files is load_checkpoint; no other module unpickles anything."""
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    sources = [p for d in ("model", "sweeps", "analysis", "bench") for p in (repo / d).rglob("*.py")] + [repo / "trainable.py"]
    calls = []
    for path in sources:
        text = path.read_text()
        assert not re.search(r"\bpickle\.loads?\(|\bcloudpickle\.loads?\(", text), path
        for match in re.finditer(r"torch\.load\(([^)]*)\)", text):
            calls.append((path.name, "weights_only=True" in match.group(1)))
    unsafe = sum(not safe for _, safe in calls)
    assert calls == [("checkpoint.py", True)] and unsafe == 0
    record("source scan: every torch.load / pickle.load in the project", files_scanned=len(sources), loads=len(calls),
           loads_not_weights_only=unsafe)
