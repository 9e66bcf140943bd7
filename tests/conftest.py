"""Shared fixtures: tiny sizes (d_model 16, 4 heads, 2 layers), CPU, fixed seeds, a private tokenizer cache."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from model.config import Config, apply_overrides, config_from_dict

TINY: dict[str, Any] = {
    "model": {"d_model": 16, "n_heads": 4, "encoder_layers": 2, "decoder_layers": 2, "d_ff": 32, "dropout": 0.1,
              "max_positions": 128},
    "data": {"synthetic": {"train_size": 400, "valid_size": 20, "test_size": 20}, "vocab_size": 120,
             "max_tokens": 256, "max_len": 64},
    "train": {"lr": 3.0e-3, "warmup_steps": 5, "max_steps": 6, "eval_every": 3, "progress": False, "threads": 1},
    "eval": {"max_sentences": 8, "batch_size": 8, "samples": 2},
}


def tiny_config(*overrides: str, base: dict[str, Any] | None = None) -> Config:
    """The tiny test config with ``key=value`` overrides applied."""
    return config_from_dict(apply_overrides(copy.deepcopy(base or TINY), list(overrides)))


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["HEADSWEEP_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)


REPO = Path(__file__).resolve().parent.parent


LEARN = ("model.d_model=64", "model.d_ff=128", "model.dropout=0.0", "gates.mode=learned",
         "gates.attention=[enc_self, dec_self, dec_cross]", "data.synthetic.train_size=3000", "data.vocab_size=300",
         "data.max_tokens=1024", "data.synthetic.valid_size=100", "eval.max_sentences=100", "eval.batch_size=50",
         "train.lr=6e-3", "train.warmup_steps=30", "train.max_steps=600", "train.eval_every=600", "train.threads=2")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory):
    """A small gated model trained on the synthetic pair (about 15 s on 2 cores), shared by the tests of
    learning, decoding and the translate command."""
    from model.train import train

    return train(tiny_config(*LEARN), tmp_path_factory.mktemp("trained"), log=lambda _: None)


@pytest.fixture
def record(request: pytest.FixtureRequest):
    """``record(what, **figures)``: a row of docs/reliability.md's table, appended as JSON to the file named by
    $HEADSWEEP_RELIABILITY_OUT (python -m bench.reliability sets it; otherwise nothing is written)."""
    def write(what: str, **figures: Any) -> None:
        out = os.environ.get("HEADSWEEP_RELIABILITY_OUT")
        if out:
            with open(out, "a", encoding="utf-8") as f:
                f.write(json.dumps({"test": request.node.nodeid, "what": what, **figures}) + "\n")
    return write
