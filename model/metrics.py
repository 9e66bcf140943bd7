"""Names of the metrics a run reports, shared by the training loop, the sweep trainable and ``analysis/``.

Never retype these strings elsewhere: import them.
"""

from .config import ATTENTION_TYPES

STEP = "step"
EPOCH = "epoch"
LOSS = "loss"  # mean label-smoothed cross-entropy per target token since the previous evaluation
NLL = "nll"  # the same without label smoothing
VALID_NLL = "valid_nll"  # teacher-forced NLL per token on the held-out split
L0 = "l0"  # expected number of open gated heads, sum of P(gate != 0)
LAMBDA = "lambda"  # the L0 penalty's weight (gates.penalty; 0 under a head budget, which has the two below)
LAMBDA1, LAMBDA2 = "lambda1", "lambda2"  # the head budget's Lagrange multipliers now (model.budget)
EXPECTED_OPEN = "expected_open"  # the head budget's expected open heads (sum of P(gate != 0)) ...
TARGET_OPEN = "target_open"  # ... and the open heads its warmed-up target asks for now
DISTILL_LOSS = "distill_loss"  # mean distillation term per target token since the previous evaluation
PENALTY = "l0_penalty"  # the L0 term lambda multiplies (per-block mean, see Transformer.penalty_l0)
LR = "lr"
BLEU = "bleu"
CHRF = "chrf"
BLEU_SIGNATURE = "bleu_signature"  # sacrebleu's signature of the BLEU above (tokenizer, smoothing, version)
CHRF_SIGNATURE = "chrf_signature"
OPEN_HEADS = "open_heads"  # heads with eval gate > 0, all attention types
TOKENS_PER_S = "tokens_per_s"  # target tokens trained per second since the previous evaluation
TRAIN_SECONDS = "train_seconds"  # wall time spent training (evaluation excluded), cumulative
STATUS = "status"  # one of the three below
RUNNING, COMPLETED, DIVERGED = "running", "completed", "diverged"  # a run's status
SMALL_HEADS_CLOSED = "small_heads_closed"  # heads removed at the end for an eval gate below gates.min_open
BLEU_WITH_SMALL_HEADS = "bleu_with_small_heads"  # held-out BLEU before that removal was tried
REASON = "reason"  # why a run ended as diverged (e.g. "non-finite loss at step 7")
SPEEDUP = "speedup"  # the pruned model's output tokens/s over the base model's, beam search, largest batch (latency)


def open_heads_key(attention_type: str) -> str:
    """Metric name of the open-head count of one attention type, e.g. ``open_heads/enc_self``."""
    if attention_type not in ATTENTION_TYPES:
        raise ValueError(f"unknown attention type {attention_type!r}; allowed: {ATTENTION_TYPES}")
    return f"{OPEN_HEADS}/{attention_type}"


def open_heads_layer_key(attention_type: str, layer: int) -> str:
    """Metric name of the open-head count of one gated layer, e.g. ``open_heads/enc_self/0``."""
    return f"{open_heads_key(attention_type)}/{layer}"
