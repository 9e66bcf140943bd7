"""Every config error names the key, the value and what is allowed; shipped configs load."""

import re
from pathlib import Path

import pytest

from model.config import Config, ConfigError, apply_overrides, config_from_dict, load_config, read_yaml
from tests.helpers import REPO, tiny_config

# (override, key the message must name) — one per validation branch in model/config.py
BAD = [
    ("model.d_model=0", "model.d_model"),
    ("model.n_heads=0", "model.n_heads"),
    ("model.encoder_layers=0", "model.encoder_layers"),
    ("model.decoder_layers=0", "model.decoder_layers"),
    ("model.d_ff=0", "model.d_ff"),
    ("model.max_positions=0", "model.max_positions"),
    ("model.n_heads=3", "model.n_heads"),
    ("model.dropout=1.0", "model.dropout"),
    ("model.attention_dropout=-0.1", "model.attention_dropout"),
    ("model.activation_dropout=1.5", "model.activation_dropout"),
    ("model.norm=sandwich", "model.norm"),
    ("model.positions=rotary", "model.positions"),
    ("gates.mode=maybe", "gates.mode"),
    ("gates.attention=[]", "gates.attention"),
    ("gates.attention=[enc_self, enc_self]", "gates.attention"),
    ("gates.attention=[encoder]", "gates.attention[0]"),
    ("gates.penalty=-0.1", "gates.penalty"),
    ("gates.temperature=0", "gates.temperature"),
    ("gates.gamma=0.1", "gates.gamma"),
    ("gates.zeta=0.9", "gates.zeta"),
    ("gates.noise=per_token", "gates.noise"),
    ("data.synthetic.train_size=0", "data.synthetic.train_size"),
    ("data.synthetic.valid_size=0", "data.synthetic.valid_size"),
    ("data.synthetic.test_size=0", "data.synthetic.test_size"),
    ("data.synthetic.max_modifiers=-1", "data.synthetic.max_modifiers"),
    ("data.synthetic.relative_clause_prob=1.5", "data.synthetic.relative_clause_prob"),
    ("data.corpus=europarl", "data.corpus"),
    ("data.vocab_size=8", "data.vocab_size"),
    ("data.character_coverage=0", "data.character_coverage"),
    ("data.spm_model_type=wordpiece", "data.spm_model_type"),
    ("data.batch_size=0", "data.batch_size"),
    ("data.max_tokens=0", "data.max_tokens"),
    ("data.max_tokens=32", "data.max_tokens"),  # smaller than max_len + 1
    ("data.max_len=1", "data.max_len"),
    ("data.max_len=500", "data.max_len"),  # beyond model.max_positions
    ("data.bucket_size=0", "data.bucket_size"),
    ("train.lr=0", "train.lr"),
    ("train.lr=-1e-3", "train.lr"),
    ("train.lr=.inf", "train.lr"),
    ("train.lr=fast", "train.lr"),
    ("train.warmup_steps=-1", "train.warmup_steps"),
    ("train.warmup_steps=0", "train.warmup_steps"),  # inverse_sqrt needs warm-up
    ("train.min_lr=-1", "train.min_lr"),
    ("train.adam_betas=[0.9]", "train.adam_betas"),
    ("train.adam_eps=0", "train.adam_eps"),
    ("train.weight_decay=-1", "train.weight_decay"),
    ("train.label_smoothing=1.0", "train.label_smoothing"),
    ("train.grad_clip=0", "train.grad_clip"),
    ("train.accumulation=0", "train.accumulation"),
    ("train.max_steps=-1", "train.max_steps"),
    ("gates.target_open=3", "gates.target_open"),
    ("gates.target_warmup=0", "gates.target_warmup"),
    ("gates.lagrangian_lr=0", "gates.lagrangian_lr"),
    ("distill.weight=1.5", "distill.weight"),
    ("distill.temperature=0", "distill.temperature"),
    ("distill.hidden_weight=-1", "distill.hidden_weight"),
    ("train.max_steps=1.5", "train.max_steps"),
    ("train.max_epochs=0", "train.max_epochs"),
    ("train.eval_every=0", "train.eval_every"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints"),
    ("train.freeze=[decoder, decoder]", "train.freeze"),
    ("train.freeze=[encoder, decoder, embeddings]", "train.freeze"),
    ("train.freeze=[attention]", "train.freeze[0]"),
    ("train.threads=0", "train.threads"),
    ("train.schedule=linear", "train.schedule"),
    ("train.precision=fp8", "train.precision"),
    ("train.device=tpu", "train.device"),
    ("train.progress=yes please", "train.progress"),
    ("eval.beam_size=0", "eval.beam_size"),
    ("eval.length_penalty=-1", "eval.length_penalty"),
    ("eval.max_len_a=-1", "eval.max_len_a"),
    ("eval.max_len_b=0", "eval.max_len_b"),
    ("eval.batch_size=0", "eval.batch_size"),
    ("eval.max_sentences=0", "eval.max_sentences"),
    ("eval.samples=-1", "eval.samples"),
    ("eval.split=train", "eval.split"),
]


@pytest.mark.parametrize("override,key", BAD, ids=[b[0] for b in BAD])
def test_bad_value_is_refused_naming_key_and_allowed(override, key, record):
    with pytest.raises(ConfigError) as err:
        tiny_config(override)
    message = str(err.value)
    named = int(f"`{key}`" in message and "Allowed" in message)
    assert named == 1, message
    record("bad value for each key of a run config", refused_naming_key=named)


def test_a_budget_per_attention_type_names_only_gated_types_within_their_heads():
    for value, key in (("{dec_self: 2}", "gates.target_open.dec_self"), ("{enc_self: 9}", "gates.target_open.enc_self")):
        with pytest.raises(ConfigError, match=f"`{key}`.*Allowed"):
            tiny_config("gates.mode=learned", f"gates.target_open={value}")
    assert tiny_config("gates.mode=learned", "gates.target_open={enc_self: 8}").gates.target_open == {"enc_self": 8}
    with pytest.raises(ConfigError, match="`gates.target_gain` is no longer a setting"):
        tiny_config("gates.target_gain=0.05")


def test_combinations_are_refused():
    with pytest.raises(ConfigError, match="model.share_embeddings"):
        tiny_config("model.share_embeddings=true", "data.joint_vocab=false")
    with pytest.raises(ConfigError, match="gates.penalty.*learned"):
        tiny_config("gates.penalty=0.1", "gates.mode=open")
    with pytest.raises(ConfigError, match="train.precision"):
        tiny_config("train.precision=fp16", "train.device=cpu")
    with pytest.raises(ConfigError, match="train.min_lr"):
        tiny_config("train.schedule=cosine", "train.min_lr=1.0")
    with pytest.raises(ConfigError, match="data.max_tokens"):
        tiny_config("data.max_tokens=null", "data.batch_size=null")


def test_valid_combinations_pass():
    cfg = tiny_config("train.freeze=[encoder, decoder, embeddings]", "gates.mode=learned", "gates.penalty=0.05",
                      "data.batch_size=32", "data.max_tokens=null", "train.schedule=constant", "train.warmup_steps=0")
    assert cfg.train.freeze == ["encoder", "decoder", "embeddings"]
    assert cfg.gates.penalty == 0.05


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match=r"Unknown key `model\.n_head`\. Did you mean `model\.n_heads`\?"):
        tiny_config("model.n_head=4")
    with pytest.raises(ConfigError, match=r"Unknown key `optimizer`"):
        tiny_config("optimizer.lr=1")


def test_section_must_be_a_mapping():
    with pytest.raises(ConfigError, match="`model`.*a mapping"):
        config_from_dict({"model": 3})


def test_defaults_are_valid_and_round_trip():
    cfg = Config()
    assert config_from_dict(cfg.to_dict()) == cfg


def test_scientific_notation_reads_as_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-4\n  min_lr: 0\n")
    cfg = load_config(path)
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.min_lr, float)


def test_yaml_syntax_error_names_file_and_line(tmp_path, record):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  d_model: 16\n  n_heads: [4\ntrain:\n  lr: 1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml at line \d+, column \d+") as refusal:
        load_config(path)
    line = re.search(r"at line (\d+)", str(refusal.value))
    assert line and 3 <= int(line.group(1)) <= 4  # the unclosed list opens on line 3, YAML notices on line 4
    record("run config with a YAML syntax error", refused_at_line=int(line.group(1)))


def test_duplicate_key_names_both_lines(tmp_path, record):
    path = tmp_path / "dup.yaml"
    path.write_text("train:\n  lr: 0.1\n  max_steps: 3\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=r"Duplicate key `lr` at line 4 \(first at line 2\)") as refusal:
        read_yaml(path)
    lines = re.search(r"at line (\d+) \(first at line (\d+)\)", str(refusal.value))
    record("run config with a duplicate key", duplicate_at_line=int(lines.group(1)), first_at_line=int(lines.group(2)))


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="Cannot read config file"):
        load_config(tmp_path / "nope.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(path)


def test_error_from_file_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: -1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: Invalid setting for `train\.lr`: -1\.0"):
        load_config(path)


def test_overrides_apply_in_order_and_refuse_malformed():
    data = apply_overrides({}, ["train.lr=0.1", "train.lr=0.2", "gates.attention=[enc_self, dec_cross]"])
    assert data == {"train": {"lr": 0.2}, "gates": {"attention": ["enc_self", "dec_cross"]}}
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["train.lr"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"train": 3}, ["train.lr=1"])


@pytest.mark.parametrize("path", sorted((REPO / "sweeps" / "runs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_run_configs_load_and_every_key_is_commented(path: Path):
    load_config(path)
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if re.match(r"^\s*[A-Za-z_]+:\s*\S", line):  # a key with a value
            assert "#" in line, f"{path.name}:{n} has no comment: {line!r}"
