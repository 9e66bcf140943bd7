import json

import pytest
import torch

from model.average import average_checkpoints, last_checkpoints
from model.average import main as average_main
from model.checkpoint import CheckpointError, load_checkpoint
from model.evaluate import main as evaluate_main
from model.train import train
from tests.helpers import tiny_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("avg")
    train(tiny_config("train.max_steps=9", "train.eval_every=3", "train.keep_checkpoints=3"), out, log=lambda _: None)
    return out


def test_average_is_the_elementwise_mean(run_dir):
    paths = last_checkpoints(run_dir, 3)
    assert len(paths) == 3
    states = [load_checkpoint(p)["model"] for p in paths]
    avg = average_checkpoints(paths)
    key = "encoder.0.ffn.fc1.weight"
    assert torch.allclose(avg["model"][key], (states[0][key] + states[1][key] + states[2][key]) / 3)
    assert "optimizer" not in avg and avg["averaged_from"] == [str(p) for p in paths]


def test_average_refuses_other_architectures(run_dir, tmp_path):
    other = train(tiny_config("model.d_ff=64", "train.max_steps=1", "train.eval_every=1"), tmp_path,
                  log=lambda _: None)
    with pytest.raises(CheckpointError, match="another architecture"):
        average_checkpoints([last_checkpoints(run_dir, 1)[0], other.checkpoint])


def test_average_and_evaluate_commands(run_dir, tmp_path, capsys):
    assert average_main(["--last", "3", str(run_dir), "--out", str(tmp_path)]) == 0  # --out: a folder
    out = tmp_path / "averaged.pt"
    assert out.is_file()
    named = tmp_path / "new" / "base.pt"  # --out: a file of the kind the command writes
    assert average_main(["--last", "1", str(run_dir), "--out", str(named)]) == 0 and named.is_file()
    before = named.read_bytes()
    assert average_main(["--last", "3", str(run_dir), "--out", str(named)]) == 2  # an existing file is kept
    assert named.read_bytes() == before and "the file exists" in capsys.readouterr().err
    assert evaluate_main([str(out), "--split", "test", "--beam", "2", "--out", str(tmp_path / "eval")]) == 0
    report = tmp_path / "eval" / "evaluation-test.json"
    printed = capsys.readouterr().out
    assert "test: BLEU" in printed and "nrefs:1" in printed
    record = json.loads(report.read_text())
    assert len(record["translations"]) == 20 and record["beam"] == 2
    assert evaluate_main([str(tmp_path / "missing.pt")]) == 2
