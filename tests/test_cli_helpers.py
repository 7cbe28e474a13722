"""weights/cli.py, the command-line helpers sample.py and compare.py share (both CLIs' tests exercise them end
to end; these pin the edges): number ranges, FILE: prompts, one-line usage errors, no torch import."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from weights import cli

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("kind, low, high, low_open, text, expected", [
    (int, 0, None, False, "0", 0),
    (int, 1, None, False, str(10**400), 10**400),  # too big for a float, still an integer
    (float, 0.0, None, False, "0", 0.0),
    (float, 0.0, 1.0, True, "1", 1.0),
    (float, 0.0, 1.0, True, "1e-300", 1e-300),
])  # fmt: skip
def test_number_accepts(kind, low, high, low_open, text, expected):
    assert cli.number(kind, low, high, low_open)(text) == expected


@pytest.mark.parametrize("kind, low, high, low_open, text, message", [
    (int, 1, None, False, "0", "0 is out of range: must be >= 1"),
    (int, 0, None, False, "2.5", "'2.5' is not an integer"),
    (float, 0.0, None, False, "x", "'x' is not a number"),
    (float, 0.0, None, False, "-1e-9", "must be a finite number >= 0.0"),
    (float, 0.0, None, False, "inf", "inf is out of range: must be a finite number >= 0.0"),
    (float, 0.0, None, False, "nan", "nan is out of range"),
    (float, 0.0, 1.0, True, "0", "0 is out of range: must be a finite number > 0.0 and <= 1.0"),
    (float, 0.0, 1.0, True, "1.0000001", "out of range"),
])  # fmt: skip
def test_number_refuses(kind, low, high, low_open, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message.replace(".", r"\.")):
        cli.number(kind, low, high, low_open)(text)


def test_parser_errors_are_one_line_with_status_2(capsys):
    parser = cli.Parser(prog="tool.py")
    parser.add_argument("--n", type=cli.number(int, 0))
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--n", "-1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "tool.py: error: argument --n: -1 is out of range: must be >= 0 (see --help)\n"


def test_read_prompt(tmp_path):
    (tmp_path / "prompt.txt").write_text("ünïcödé\n<|endoftext|>", encoding="utf-8")
    assert cli.read_prompt(f"FILE:{tmp_path / 'prompt.txt'}") == "ünïcödé\n<|endoftext|>"
    assert cli.read_prompt("FILE is only a prefix at the start: FILE:x") == "FILE is only a prefix at the start: FILE:x"
    with pytest.raises(ValueError, match=r"cannot read the prompt file .*missing\.txt: No such file"):
        cli.read_prompt(f"FILE:{tmp_path / 'missing.txt'}")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt is not UTF-8 text"):
        cli.read_prompt(f"FILE:{tmp_path / 'latin1.txt'}")


def test_no_torch_import():
    """Framework-neutral, like all of weights/: the NumPy backend's CLI path must not pull torch in."""
    code = "import sys, weights.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_running_out_of_memory_is_one_line_with_status_1(capsys):
    """A MemoryError (NumPy's, for a batch too large for the machine) ends the run with exit 1 and one line that
    says what could not be allocated, not a traceback; what was printed before stays printed."""
    def main():
        print("the first sample")
        raise MemoryError("Unable to allocate 29.3 GiB for an array with shape (120000, 12, 1024, 64)")

    with pytest.raises(SystemExit) as exit_info:
        cli.run("sample.py", main)
    out, err = capsys.readouterr()
    assert exit_info.value.code == 1
    assert out == "the first sample\n"
    assert err == ("sample.py: error: out of memory (Unable to allocate 29.3 GiB for an array with shape "
                   "(120000, 12, 1024, 64)); try a smaller model, batch or dtype\n")


def test_output_paths_that_would_block_or_fail_are_refused_up_front(tmp_path):
    """compare.py's --json, --plot and --save-trace paths are checked before the comparison runs: a FIFO would
    block the write at the end (no reader), a directory fails it; a new or regular file and a character device
    (/dev/null) are writable."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert "FIFO" in cli.output_path_problem(str(fifo))
    assert cli.output_path_problem(str(tmp_path)) == "is a directory"
    (tmp_path / "old.json").write_text("{}")
    assert cli.output_path_problem(str(tmp_path / "old.json")) is None
    assert cli.output_path_problem(str(tmp_path / "new.json")) is None
    assert cli.output_path_problem(os.devnull) is None
