"""What sample.py and compare.py share on the command line: one-line usage errors, number ranges, FILE: prompts.

Framework-neutral like the rest of weights/: nothing here imports torch.
"""

import argparse
import math
from pathlib import Path


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, `prog: error: message (see --help)`, with exit status 2."""

    def error(self, message):  # not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def number(kind, low, high=None, low_open=False):
    """An argparse type: a finite kind (int or float) in [low, high], or in (low, high] with low_open."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not {'an integer' if kind is int else 'a number'}") from None
        finite = kind is int or math.isfinite(value)  # inf and nan parse as floats; an int may be too big for one
        above_low = value > low if low_open else value >= low
        if not (finite and above_low and (high is None or value <= high)):
            what = "a finite number " if kind is float else ""
            bounds = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high is not None else "")
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {what}{bounds}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def read_prompt(start: str) -> str:
    """The prompt: start itself, or with start = FILE:path the text of that UTF-8 file.

    Raises ValueError with a one-line message when the file cannot be read or is not UTF-8."""
    if not start.startswith("FILE:"):
        return start
    path = start[len("FILE:"):]
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"cannot read the prompt file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"the prompt file {path} is not UTF-8 text") from None
