"""Training throughput of the gated Transformer against ``torch.nn.Transformer``, measured in the same run.

Both models get the same size, vocabulary, batches (real synthetic-pair batches with their padding), loss
(label-smoothed cross-entropy), optimizer (fused Adam, as training uses), dropout 0.1 and threads.
nn.Transformer's one dropout also drops attention probabilities, which headsweep leaves to
``model.attention_dropout`` (default 0); a row with attention dropout 0.1 shows the like-for-like figure. Timings
alternate between the models over several rounds and the median round is used, since this machine is noisy.

Model-FLOPs utilisation (MFU): the model FLOPs a second each model trains at, divided by the machine's matmul
peak measured in the same run (the median of several large fp32 (or bf16 on GPU) matrix products on the same
threads). Model FLOPs count 6 per parameter per token that parameter sees (Kaplan et al. 2020: forward 2, backward
4): encoder layers per source token, decoder layers and the output projection per target token; embeddings
lookups and the attention scores themselves are left out (small at these lengths), so MFU is a lower bound.

With ``--amp bf16`` (on a CPU with AMX or AVX-512 BF16, bf16 matrix products run several times faster than
fp32 ones) the two first models are timed in fp32 as well, and ``bf16_speedup=`` (the gated model in bf16 over the
same in fp32) and ``bf16_ratio_vs_fp32_nn_transformer=`` (over ``nn.Transformer`` in fp32) come before the lines
below, whose ratio is then both models under bf16.

Prints ``throughput_ratio_vs_nn_transformer=X`` (gated tokens/s ÷ nn.Transformer tokens/s, gates learning),
``gate_overhead=Y`` (step time with gates learning ÷ without gates), ``mfu=Z`` (the gated model's) and
``mfu_nn_transformer=W`` as the last lines.

    python bench/throughput.py [--d-model 256 --heads 4 --layers 3 --ff 1024 --max-tokens 4096 --device cpu]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.config import DataConfig, GateConfig, ModelConfig, SyntheticConfig  # noqa: E402
from model.data import PAD_ID, collate, load_data, make_batches  # noqa: E402
from model.train import fused_adam  # noqa: E402
from model.transformer import Transformer, sinusoidal_table  # noqa: E402


class TorchBaseline(nn.Module):
    """``nn.Transformer`` with embeddings, sinusoidal positions and a tied output layer, as a user would write it."""

    def __init__(self, cfg: ModelConfig, vocab: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, cfg.d_model, padding_idx=PAD_ID)
        self.register_buffer("pos", sinusoidal_table(cfg.max_positions, cfg.d_model), persistent=False)
        self.core = nn.Transformer(
            cfg.d_model, cfg.n_heads, cfg.encoder_layers, cfg.decoder_layers, cfg.d_ff, cfg.dropout,
            batch_first=True, norm_first=cfg.norm == "pre",
        )
        self.output = nn.Linear(cfg.d_model, vocab)
        self.output.weight = self.embed.weight
        self.scale = math.sqrt(cfg.d_model)

    def loss(self, src, tgt_in, tgt_out, label_smoothing):
        S, T = src.size(1), tgt_in.size(1)
        x = self.embed(src) * self.scale + self.pos[:S]
        y = self.embed(tgt_in) * self.scale + self.pos[:T]
        causal = torch.ones(T, T, dtype=torch.bool, device=src.device).triu(1)  # True = masked, like the padding masks
        h = self.core(x, y, tgt_mask=causal, src_key_padding_mask=src.eq(PAD_ID),
                      tgt_key_padding_mask=tgt_in.eq(PAD_ID), memory_key_padding_mask=src.eq(PAD_ID),
                      tgt_is_causal=True)
        logits = self.output(h).float()
        return F.cross_entropy(logits.view(-1, logits.size(-1)), tgt_out.reshape(-1), ignore_index=PAD_ID,
                               label_smoothing=label_smoothing, reduction="sum")


def make_step(model: nn.Module, amp: torch.dtype | None, device: torch.device):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-4, betas=(0.9, 0.98), fused=fused_adam(params))  # as model/train.py
    model.train()

    def step(batch) -> tuple[int, int]:
        opt.zero_grad(set_to_none=True)
        ctx = torch.autocast(device.type, dtype=amp) if amp else torch.autocast(device.type, enabled=False)
        with ctx:
            out = model.loss(batch.src, batch.tgt_in, batch.tgt_out, 0.1)
        ce = out.ce_sum if hasattr(out, "ce_sum") else out
        n = int(batch.tgt_out.ne(PAD_ID).sum())
        (ce / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return n, int(batch.src.ne(PAD_ID).sum())

    return step


def time_steps(step, batches, device) -> tuple[float, int, int]:
    """Seconds, target tokens and source tokens of training on ``batches``."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, tokens, sources = time.perf_counter(), 0, 0
    for b in batches:
        tgt, src = step(b)
        tokens, sources = tokens + tgt, sources + src
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, tokens, sources


def flop_counts(model: nn.Module, d_model: int, vocab: int) -> tuple[int, int]:
    """Model FLOPs per source token and per target token of one training step (6 per parameter a token passes):
    encoder layers per source token; decoder layers and the output projection (vocab x d_model) per target token."""
    enc = dec = 0
    for name, p in model.named_parameters():
        name = name.removeprefix("core.")
        if name.startswith("encoder."):
            enc += p.numel()
        elif name.startswith("decoder."):
            dec += p.numel()
    return 6 * enc, 6 * (dec + vocab * d_model)


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int = 2048, rounds: int = 5) -> float:
    """The machine's matmul FLOP/s on these threads: the median of ``rounds`` products of two size x size
    matrices (a few each)."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    times = []
    for _ in range(rounds + 1):  # the first warms up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / 4)
    return 2 * size**3 / statistics.median(times[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--ff", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=2000)
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--steps", type=int, default=8, help="timed steps per model per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", choices=["fp32", "bf16"], default=None, help="default: bf16 on GPU, fp32 on CPU")
    p.add_argument("--compile", action="store_true", help="also time the gated model under torch.compile")
    args = p.parse_args()
    warnings.filterwarnings("ignore", message="enable_nested_tensor is True")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp = {"bf16": torch.bfloat16, "fp32": None}[args.amp or ("bf16" if device.type == "cuda" else "fp32")]
    torch.manual_seed(0)

    data_cfg = DataConfig(synthetic=SyntheticConfig(train_size=20000, valid_size=10, test_size=10),
                          vocab_size=args.vocab, max_tokens=args.max_tokens)
    data = load_data(data_cfg, "valid", log=lambda m: print(m, file=sys.stderr))
    train = data.splits["train"]
    order = make_batches(train.src_lengths, train.tgt_lengths, args.max_tokens, None, 100, seed=0, epoch=0)
    n_batches = args.steps * args.rounds + 2
    batches = [collate(train, idx).to(device) for idx in order[:n_batches]]
    vocab = len(data.tokenizers.src)

    mcfg = ModelConfig(d_model=args.d_model, n_heads=args.heads, encoder_layers=args.layers,
                       decoder_layers=args.layers, d_ff=args.ff, dropout=0.1, share_embeddings=True)
    all_types = ["enc_self", "dec_self", "dec_cross"]
    models: dict[str, nn.Module] = {
        "nn.Transformer": TorchBaseline(mcfg, vocab),
        "gated (learning, all attention)": Transformer(mcfg, vocab, vocab, GateConfig(mode="learned", attention=all_types)),
        "headsweep, no gates": Transformer(mcfg, vocab, vocab, GateConfig(mode="none")),
        # nn.Transformer's single dropout also drops attention probabilities; this row matches that
        "gated, attention_dropout 0.1": Transformer(dataclasses.replace(mcfg, attention_dropout=0.1), vocab, vocab,
                                                    GateConfig(mode="learned", attention=all_types)),
    }
    if args.compile:
        compiled = Transformer(mcfg, vocab, vocab, GateConfig(mode="learned", attention=all_types))
        compiled.loss = torch.compile(compiled.loss, dynamic=True)
        models["gated + torch.compile"] = compiled
    fp32_rows = []  # with --amp bf16: the same two models in fp32, what bf16 buys (each MFU against the fp32 peak)
    if amp is not None:
        for name in ("nn.Transformer", "gated (learning, all attention)"):
            models[f"{name}, fp32"] = copy.deepcopy(models[name])
            fp32_rows.append(f"{name}, fp32")
    steps = {name: make_step(m.to(device), None if name in fp32_rows else amp, device) for name, m in models.items()}
    for name, step in steps.items():  # warm-up (allocator, compile)
        time_steps(step, batches[:2], device)

    rates: dict[str, list[float]] = {name: [] for name in steps}
    step_times: dict[str, list[float]] = {name: [] for name in steps}
    flop_rates: dict[str, list[float]] = {name: [] for name in steps}
    per_token = {name: flop_counts(m, args.d_model, vocab) for name, m in models.items()}
    peaks, peaks32 = [], []
    for r in range(args.rounds):
        chunk = batches[2 + r * args.steps : 2 + (r + 1) * args.steps]
        peaks.append(matmul_peak(device, amp or torch.float32))  # alternating with the models, as they share the noise
        if fp32_rows:
            peaks32.append(matmul_peak(device, torch.float32))
        for name, step in steps.items():
            seconds, tokens, sources = time_steps(step, chunk, device)
            rates[name].append(tokens / seconds)
            step_times[name].append(seconds / len(chunk))
            flop_rates[name].append((per_token[name][0] * sources + per_token[name][1] * tokens) / seconds)
    peak = statistics.median(peaks)
    peak32 = statistics.median(peaks32) if peaks32 else peak

    name_dev = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name_dev}; torch {torch.__version__}; amp: {args.amp or ('bf16' if device.type == 'cuda' else 'fp32')}")
    print(f"model: d_model {args.d_model}, {args.heads} heads, {args.layers}+{args.layers} layers, d_ff {args.ff}, "
          f"vocab {vocab}; batches of <= {args.max_tokens} tokens; {args.rounds} rounds x {args.steps} steps")
    print(f"matmul peak: {peak / 1e9:.1f} GFLOP/s (median of {len(peaks)}: "
          f"{', '.join(f'{x / 1e9:.0f}' for x in peaks)})")
    if peaks32:
        print(f"fp32 matmul peak: {peak32 / 1e9:.1f} GFLOP/s (the fp32 rows' MFU)")
    for name in steps:
        print(f"  {name:40s} {statistics.median(rates[name]):9.0f} target tokens/s  "
              f"MFU {statistics.median(flop_rates[name]) / (peak32 if name in fp32_rows else peak):.3f}  "
              f"(rounds: {', '.join(f'{x:.0f}' for x in rates[name])})")
    base = statistics.median(rates["nn.Transformer"])
    gated = statistics.median(rates["gated (learning, all attention)"])
    overhead = statistics.median(step_times["gated (learning, all attention)"]) / statistics.median(step_times["headsweep, no gates"])
    if args.compile:
        print(f"compiled_ratio_vs_nn_transformer={statistics.median(rates['gated + torch.compile']) / base:.3f}")
    same_dropout = statistics.median(rates["gated, attention_dropout 0.1"])
    print(f"same_dropout_ratio_vs_nn_transformer={same_dropout / base:.3f}")
    if fp32_rows:
        print(f"bf16_speedup={gated / statistics.median(rates['gated (learning, all attention), fp32']):.3f}")
        print(f"bf16_ratio_vs_fp32_nn_transformer={gated / statistics.median(rates['nn.Transformer, fp32']):.3f}")
    print(f"throughput_ratio_vs_nn_transformer={gated / base:.3f}")
    print(f"gate_overhead={overhead:.3f}")
    print(f"mfu={statistics.median(flop_rates['gated (learning, all attention)']) / peak:.3f}")
    print(f"mfu_nn_transformer={statistics.median(flop_rates['nn.Transformer']) / peak:.3f}")


if __name__ == "__main__":
    main()
