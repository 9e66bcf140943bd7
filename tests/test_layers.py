"""The layers of ARCHITECTURE: model/ runs without Ray, Optuna or W&B; analysis/ without Ray and never uploads;
calls go downward only; the `headsweep` commands share their flags; --dry-run plans without Ray."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, SLOW_FIXTURES

LAYERS = {"model": 0, "sweeps": 1, "analysis": 1, "trainable": 2}  # what each package may import: its own or lower
FORBIDDEN = {"model": {"ray", "optuna", "wandb", "sweeps", "analysis", "trainable"},
             "sweeps": {"trainable", "analysis"},
             "analysis": {"ray", "wandb", "trainable", "sweeps.tuner", "sweeps.raycluster", "sweeps.search",
                          "sweeps.resume", "sweeps.wandb_log", "sweeps.retention"}}


def _modules(package: str) -> list[str]:
    return sorted(f"{package}.{p.stem}" for p in (REPO / package).glob("*.py") if p.stem != "__init__")


def _imports(path: Path) -> set[str]:
    """Every module a source file imports, at any depth of the file (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _blocked_import(modules: list[str], blocked: list[str]) -> subprocess.CompletedProcess:
    code = ("import sys\n" + "".join(f"sys.modules[{b!r}] = None\n" for b in blocked)  # import b -> ImportError
            + "".join(f"import {m}\n" for m in modules) + "print('imported', len(sys.modules))\n")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("package", ["model", "sweeps", "analysis"])
def test_no_package_imports_what_its_layer_forbids(package: str):
    """A source scan: model/ imports neither Ray, Optuna, W&B nor any layer above; sweeps/ never the entry point;
    analysis/ neither Ray, W&B nor the sweep layer's Ray-side modules."""
    bad = []
    for path in sorted((REPO / package).glob("*.py")):
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[package]):
                bad.append(f"{path.relative_to(REPO)} imports {name}")
    assert not bad, bad


def test_every_model_module_imports_where_ray_optuna_and_wandb_cannot():
    proc = _blocked_import(_modules("model"), ["ray", "optuna", "wandb"])
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_analysis_and_the_ray_free_sweep_modules_import_without_ray_and_wandb():
    ray_free = [m for m in _modules("sweeps") if m not in ("sweeps.tuner", "sweeps.retention")]
    analysis = [m for m in _modules("analysis") if m != "analysis.pareto_notebook"]  # a notebook: runs on import
    proc = _blocked_import(analysis + ray_free + ["sweeps"], ["ray", "wandb"])
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_the_results_format_is_named_by_its_writer_only():
    """analysis/ reads file names and columns from sweeps.results; no module retypes them."""
    for path in sorted((REPO / "analysis").glob("*.py")) + [REPO / "trainable.py"]:
        text = path.read_text(encoding="utf-8")
        for literal in ('"trials.csv"', '"sweep.json"', '"optuna.db"', '"metrics.jsonl"', '"gates.jsonl"'):
            assert literal not in text, f"{path.name} retypes {literal}"


def test_dry_run_prints_the_plan_without_ray(tmp_path: Path):
    """`headsweep sweep --dry-run` with Ray made unimportable: the plan, and no folder written."""
    code = ("import sys\nsys.modules['ray'] = None\nimport trainable\n"
            f"sys.exit(trainable.cli(['sweep', 'sweeps/quickstart.yaml', '--dry-run', '--results', {str(tmp_path / 'r')!r},"
            " '--set', 'search.num_samples=3']))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for expected in ("objectives: bleu max, open_heads min", "gates.penalty: loguniform [0.01, 1.0]",
                     "tpe (seed 0), 3 trials", "stage pretrain:", ": to train;", "gates: 3 trials;",
                     "train.freeze []"):
        assert expected in out, out
    assert not (tmp_path / "r").exists()


def test_the_headsweep_command_lists_and_runs_every_subcommand(capsys):
    import trainable

    assert trainable.cli(["--help"]) == 0
    listing = capsys.readouterr().out
    names = ["sweep", "train", "translate", "evaluate", "average", "prune", "export", "report"]
    assert all(f"  {n}" in listing for n in names)
    assert trainable.cli(["nonsense"]) == 2
    assert "unknown command 'nonsense'" in capsys.readouterr().err
    for name in names:
        with pytest.raises(SystemExit) as stop:
            trainable.cli([name, "--help"])
        assert stop.value.code == 0
        text = capsys.readouterr().out
        assert text.startswith(f"usage: headsweep {name}"), text[:200]
        examples = text.split("examples:\n")
        assert len(examples) == 2 and f"headsweep {name} " in examples[1].splitlines()[0], text  # ends with examples
        for flag in ("--out", "--data-dir", "--set"):  # the same flag says the same thing in every command
            if flag in text:
                meaning = {"--out": "output folder", "--data-dir": "folder of downloaded corpora",
                           "--set": "override a"}[flag]
                assert meaning in " ".join(text.split()), (name, flag)


def test_the_console_script_is_installed_with_the_project():
    script = Path(sys.executable).parent / "headsweep"
    if not script.exists():
        pytest.skip(f"no {script}: the project is not installed into this interpreter's environment (pip install -e .)")
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "commands:" in proc.stdout


def test_a_trials_run_config_is_validated_once(monkeypatch):
    """sweep key -> run_config -> Config: one validation per trial config, none elsewhere."""
    import sweeps.sweep as sweep_module
    from sweeps.validate import load_sweep

    sweep = load_sweep(REPO / "sweeps" / "quickstart.yaml")
    calls = []
    real = sweep_module.config_from_dict
    monkeypatch.setattr(sweep_module, "config_from_dict", lambda data: calls.append(1) or real(data))
    cfg = sweep.trial_config({"gates.penalty": 0.2, "train.lr": 1e-3, "data.max_tokens": 1024})
    assert len(calls) == 1
    assert cfg.gates.penalty == 0.2 and cfg.train.lr == 1e-3 and cfg.data.max_tokens == 1024
    assert cfg.gates.mode == "learned" and cfg.train.progress is False and cfg.train.threads == 1


SLOW_CALLS = {"run_cli", "start_cli", "Cluster", "loopback_cluster", "start_ray_head", "_run"}  # the sweep command, Ray, `ray up`


def _marked_slow(decorators: list[ast.expr]) -> bool:
    return any(ast.unparse(d).startswith("pytest.mark.slow") for d in decorators)


def test_every_test_that_runs_the_sweep_command_or_starts_ray_is_marked_slow():
    """The fast loop (`pytest -m "not slow"`) stays fast: a test that runs the sweep command, starts a Ray cluster
    or `ray up` carries the `slow` marker (by hand, for its module, or through a slow fixture: conftest)."""
    unmarked = []
    for path in sorted((REPO / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module_slow = any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in n.targets)
                          and "slow" in ast.unparse(n.value) for n in tree.body)
        for node in tree.body:
            if not (isinstance(node, ast.FunctionDef) and node.name.startswith("test_")):
                continue
            calls = {getattr(c.func, "id", getattr(c.func, "attr", "")) for c in ast.walk(node)
                     if isinstance(c, ast.Call)}
            fixtures = {a.arg for a in node.args.args}
            if calls & SLOW_CALLS and not (module_slow or _marked_slow(node.decorator_list) or fixtures & SLOW_FIXTURES):
                unmarked.append(f"{path.name}::{node.name} ({', '.join(sorted(calls & SLOW_CALLS))})")
    assert not unmarked, unmarked


def test_tests_share_helpers_through_one_module_and_never_import_conftest_or_each_other():
    """Shared test code lives in tests/helpers.py; conftest holds fixtures and hooks and is imported by pytest alone
    (a second import under another name runs it twice: two sessions' marks, two caches)."""
    bad = re.compile(r"^\s*(from\s+(tests\.)?(conftest|test_\w+)\s+import|import\s+(tests\.)?(conftest|test_\w+))", re.M)
    found = [f"{p.name}: {m.group(0).strip()}" for p in sorted((REPO / "tests").glob("*.py"))
             for m in bad.finditer(p.read_text(encoding="utf-8"))]
    assert not found, found
    out = subprocess.run([sys.executable, "-c", "import sys, tests.helpers; print('ray' in sys.modules)"], cwd=REPO,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == "False", out.stderr  # its environment is set before anything imports Ray


def test_stage_method_and_status_names_are_compared_through_their_constants():
    """`stage`, `method` and `status` values are named once (sweeps.results, sweeps.schema, model.metrics); code that
    compares against one spells the constant, so a renamed value cannot leave a comparison silently false."""
    from model import metrics as M
    from sweeps.results import STAGES
    from sweeps.schema import METHODS

    names = {*METHODS, *STAGES, M.RUNNING, M.COMPLETED, M.DIVERGED}
    samplers = {"analysis/sampler_study.py": {"random"}, "sweeps/search.py": {"random"}}  # Optuna's sampler names
    found = []
    files = [*sorted((REPO / "model").glob("*.py")), *sorted((REPO / "sweeps").glob("*.py")),
             *sorted((REPO / "analysis").glob("*.py")), REPO / "trainable.py"]
    for path in files:
        where = str(path.relative_to(REPO))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare):
                for side in [node.left, *node.comparators]:
                    values = [side] if isinstance(side, ast.Constant) else list(getattr(side, "elts", []))
                    for value in values:
                        if isinstance(value, ast.Constant) and value.value in names - samplers.get(where, set()):
                            found.append(f"{where}:{node.lineno}: {value.value!r}")
    assert not found, found
