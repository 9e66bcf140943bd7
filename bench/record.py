"""Run a benchmark and record what it printed, with when, where and how it ran: one file per benchmark in docs/bench/.

    python bench/record.py throughput -- --threads 2
    python bench/record.py pruned_speed --as pruned_speed_128 -- --threads 2 --src-len 128
    python bench/record.py sweep_overhead
    python bench/record.py --render docs/bench/throughput.json         # write its Markdown again

The benchmark (``bench/<name>.py``) runs as a child process; its output is shown as it comes and kept. Its figures
are the ``name=value`` lines it prints (every benchmark ends with them). Two files are written:

- ``docs/bench/<name>.json``: date, commit (and whether the tree had uncommitted changes), machine (CPU model, cores,
  load average before the run, Python, torch), the command, the wall time, the figures and the whole output;
- ``docs/bench/<name>.md``: the same as a Markdown block that docs pages quote through ``analysis.writeup``
  (``<!-- generated from bench/<name>.md by python -m analysis.writeup -->``), so a page's figures are the
  recording's and ``tests/test_writeup.py`` fails where a page differs from it.

A benchmark that exits non-zero is not recorded (the recording it would replace stays).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECORDINGS = REPO / "docs" / "bench"
FIGURE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(-?[0-9.]+(?:e[-+]?[0-9]+)?)$")


def figures(output: str) -> dict[str, float]:
    """The ``name=value`` lines of a benchmark's output (a later line of the same name wins)."""
    found = {}
    for line in output.splitlines():
        m = FIGURE.match(line.strip())
        if m:
            found[m[1]] = float(m[2])
    return found


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def machine() -> dict[str, object]:
    """What the figures depend on: the CPU, its cores, how busy it was, the software."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import torch

        torch_version = torch.__version__
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        torch_version, gpu = None, None
    return {"cpu": cpu, "cores": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2),
            "gpu": gpu, "python": platform.python_version(), "torch": torch_version, "system": platform.system()}


def render(recording: dict) -> str:
    """The Markdown a docs page quotes: where and how the figures were measured, then the output as printed."""
    m = recording["machine"]
    where = f"{m['cpu']}, {m['cores']} cores" + (f", {m['gpu']}" if m.get("gpu") else "")
    commit = recording["commit"][:12] + (" (with uncommitted changes)" if recording.get("dirty") else "")
    return (f"Recorded {recording['date']} at commit {commit}: {where}; load average {m['load_average_1min']} "
            f"before the run; Python {m['python']}, torch {m['torch']}; {recording['wall_seconds']:.0f} s. "
            f"Recording: [bench/{recording['name']}.json]({recording['name']}.json).\n\n"
            f"```\n$ {recording['command']}\n{recording['output'].rstrip()}\n```\n")


def write(recording: dict, folder: Path | None = None) -> tuple[Path, Path]:
    folder = folder or RECORDINGS
    folder.mkdir(parents=True, exist_ok=True)
    data, page = folder / f"{recording['name']}.json", folder / f"{recording['name']}.md"
    data.write_text(json.dumps(recording, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    page.write_text(render(recording), encoding="utf-8")
    return data, page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run bench/<name>.py and record its output and figures in "
                                     "docs/bench/<name>.{json,md}.")
    parser.add_argument("name", nargs="?", help="the benchmark: bench/<name>.py")
    parser.add_argument("args", nargs="*", help="passed on to the benchmark (after --)")
    parser.add_argument("--as", dest="label", help="the recording's name (default: the benchmark's), for a "
                        "second setting of one benchmark")
    parser.add_argument("--render", type=Path, help="write the Markdown of a recording (.json) again; run nothing")
    argv = list(sys.argv[1:] if argv is None else argv)
    rest = argv[argv.index("--") + 1:] if "--" in argv else []  # the benchmark's own arguments, passed as they are
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    args.args = [*args.args, *rest]
    if args.render:
        recording = json.loads(args.render.read_text(encoding="utf-8"))
        print(write(recording, args.render.parent)[1])
        return 0
    script = REPO / "bench" / f"{args.name}.py"
    if args.name and not script.is_file() and script.with_suffix(".sh").is_file():
        script = script.with_suffix(".sh")  # a series of sweeps (bench/early_stop.sh), run with this Python
    benchmarks = sorted(p.stem for p in (REPO / "bench").glob("*.*") if p.suffix in (".py", ".sh")
                        and p.stem not in ("record", "sweep_series", "gpu_check"))
    if not args.name or not script.is_file():
        parser.error(f"no benchmark bench/{args.name}.py; one of: {', '.join(benchmarks)}")
    env = [f"HEADSWEEP_DATA={os.environ['HEADSWEEP_DATA']}"] if os.environ.get("HEADSWEEP_DATA") else []
    runner = ["bash"] if script.suffix == ".sh" else ["python"]
    command = [*env, *runner, f"bench/{script.name}", *args.args]
    before = machine()
    start = time.perf_counter()
    run = ["bash", str(script)] if script.suffix == ".sh" else [sys.executable, str(script)]
    child = subprocess.Popen([*run, *args.args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, bufsize=1, env={**os.environ, "PYTHON": sys.executable})
    lines = []
    for line in child.stdout:
        sys.stdout.write(line)
        lines.append(line.replace("\r", "\n"))
    code = child.wait()
    if code != 0:
        print(f"error: bench/{script.name} exited {code}; nothing recorded", file=sys.stderr)
        return code
    output = "".join(lines)
    found = figures(output)
    if not found:
        print(f"error: bench/{script.name} printed no name=value figure; nothing recorded", file=sys.stderr)
        return 2
    dirty = bool(_git("status", "--porcelain", "--", "model", "sweeps", "analysis", "bench", "trainable.py"))
    recording = {"name": args.label or args.name, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "commit": _git("rev-parse", "HEAD"), "dirty": dirty, "machine": before,
                 "command": " ".join([*env, shlex.join(command[len(env):])]),
                 "wall_seconds": round(time.perf_counter() - start, 1), "figures": found, "output": output}
    for path in write(recording):
        print(f"recorded: {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
