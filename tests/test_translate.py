import subprocess
import sys

from model.translate import load_for_inference, translate_lines
from tests.helpers import REPO


def test_translate_lines_keeps_order_and_empty_lines(trained_run):
    model, tok = load_for_inference(str(trained_run.checkpoint))
    assert not model.training
    lines = ["The dog sees a cat.", "", "Some old farmers that sleep liked the red house near a river.",
             "A queen builds the bridge."]
    out = list(translate_lines(model, tok, lines, beam_size=3, batch_size=2))
    assert len(out) == 4 and out[1] == ""
    assert all(o for i, o in enumerate(out) if i != 1)
    one_by_one = [next(translate_lines(model, tok, [line], beam_size=3)) for line in lines]
    assert out == one_by_one


def test_translate_cli_reads_stdin(trained_run):
    proc = subprocess.run(
        [sys.executable, "-m", "model.translate", str(trained_run.checkpoint), "--beam", "2"],
        input="The dog sees a cat.\nA queen builds the bridge.\n", capture_output=True, text=True, cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 2


def test_translate_cli_refuses_a_missing_checkpoint(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "model.translate", str(tmp_path / "none.pt")],
                          input="", capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
