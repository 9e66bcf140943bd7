"""Translate stdin line by line with a checkpoint: ``python -m model.translate CHECKPOINT [--beam N]``.

The checkpoint carries its config and tokenizers, so nothing else is needed. Gates are in eval mode
(deterministic); output lines correspond one to one to input lines (an empty line gives an empty line).
"""

from __future__ import annotations

import sys
from typing import Iterable, Iterator

import torch

from .checkpoint import CheckpointError, checkpoint_config, checkpoint_tokenizers, load_checkpoint, load_model_state
from .cli import command_parser
from .data import EOS_ID, Tokenizers, pad_rows
from .decoding import translate_ids
from .transformer import Transformer


def load_for_inference(path: str, device: str = "cpu", payload: dict | None = None) -> tuple[Transformer, Tokenizers]:
    """A model in eval mode and its tokenizers, from a checkpoint file (or its already loaded ``payload``)."""
    payload = payload if payload is not None else load_checkpoint(path, map_location=device)
    cfg = checkpoint_config(payload)
    tok = checkpoint_tokenizers(payload)
    model = Transformer(cfg.model, len(tok.src), len(tok.tgt), cfg.gates)
    load_model_state(model, payload["model"], source=str(path))
    return model.to(device).eval(), tok


def translate_lines(
    model: Transformer, tok: Tokenizers, lines: Iterable[str], beam_size: int = 5, length_penalty: float = 1.0,
    max_len_a: float = 1.5, max_len_b: int = 10, batch_size: int = 32, device: str = "cpu",
) -> Iterator[str]:
    """Translations of ``lines``, in order, decoded ``batch_size`` lines at a time."""
    limit = model.src_pos.table.size(0)
    buffer: list[str] = []

    def flush() -> list[str]:
        ids = [i[: limit - 1] + [EOS_ID] for i in tok.src.encode(buffer)]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        src = pad_rows([ids[i] for i in order], max(len(x) for x in ids)).to(device)
        hyps = translate_ids(model, src, beam_size, length_penalty, max_len_a, max_len_b)
        out = [""] * len(ids)
        for row, i in enumerate(order):
            out[i] = tok.tgt.decode([hyps[row]])[0]
        return [o if line.strip() else "" for o, line in zip(out, buffer)]

    for line in lines:
        buffer.append(line.rstrip("\n"))
        if len(buffer) == batch_size:
            yield from flush()
            buffer = []
    if buffer:
        yield from flush()


def main(argv: list[str] | None = None, prog: str = "python -m model.translate") -> int:
    parser = command_parser(prog, __doc__.splitlines()[0], [
        f'echo "The big dog sees a small cat." | {prog} results/pruned/pruned.pt --beam 5',
        f"{prog} model.pt --beam 1 < sources.txt > hypotheses.txt",
    ])
    parser.add_argument("checkpoint")
    parser.add_argument("--beam", type=int, default=5, help="beam size (1 = greedy)")
    parser.add_argument("--length-penalty", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.beam < 1 or args.batch_size < 1:
        print("error: --beam and --batch-size must be >= 1", file=sys.stderr)
        return 2
    try:
        model, tok = load_for_inference(args.checkpoint, args.device)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Interactive use: translate each line as it arrives; piped input: batch for speed.
    batch = 1 if sys.stdin.isatty() else args.batch_size
    for out in translate_lines(model, tok, sys.stdin, args.beam, args.length_penalty, batch_size=batch,
                               device=args.device):
        print(out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
