"""The command-line conventions every headsweep command shares (``headsweep <command>`` and ``python -m ...``).

- ``--out DIR`` is always a folder: the command writes its files into it and prints their paths;
- ``--data-dir DIR`` is always the folder of downloaded corpora (``data.data_dir``), made absolute where the
  command runs, so that a trial on another node or in another working folder reads the same place;
- ``--set KEY=VALUE`` (repeatable) always overrides one config key, its value read as YAML;
- every ``--help`` ends with examples.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

DATA_DIR_HELP = ("folder of downloaded corpora (data.data_dir; default $HEADSWEEP_DATA, else "
                 "~/.cache/headsweep/data)")


def command_parser(prog: str, description: str, examples: Sequence[str]) -> argparse.ArgumentParser:
    """An argument parser whose help ends with ``examples`` (one command line each)."""
    return argparse.ArgumentParser(prog=prog, description=description,
                                   epilog="examples:\n" + "\n".join(f"  {e}" for e in examples),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_out(parser: argparse.ArgumentParser, what: str, required: bool = False) -> None:
    parser.add_argument("--out", metavar="DIR", required=required, default=None, help=f"output folder: {what}")


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", metavar="DIR", default=None, help=DATA_DIR_HELP)


def add_set(parser: argparse.ArgumentParser, what: str = "config", example: str = "train.max_steps=500") -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a {what} key, e.g. --set {example} (repeatable; values are YAML)")


def data_dir(args: argparse.Namespace) -> str | None:
    """``--data-dir`` as an absolute path, or None."""
    return str(Path(args.data_dir).expanduser().resolve()) if getattr(args, "data_dir", None) else None


def out_file(folder: str | Path, name: str) -> Path:
    """``name`` inside the ``--out`` folder, which is created; or, where ``--out`` is no folder and ends like
    ``name`` (``--out base.pt`` for a checkpoint), that file. An existing file is never overwritten."""
    folder = Path(folder)
    if folder.is_file():
        raise FileExistsError(f"--out {folder}: the file exists and is left as it is; name a folder (the command "
                              f"writes {name} into it) or a new file")
    if not folder.is_dir() and folder.suffix and folder.suffix == Path(name).suffix:
        folder.parent.mkdir(parents=True, exist_ok=True)
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name
