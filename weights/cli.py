"""What sample.py and compare.py share on the command line: one-line errors and exit statuses, number ranges,
FILE: prompts, output paths, and standard output written as UTF-8 whatever the locale.

Exit statuses: 0 success; 2 bad input in both commands (usage, a checkpoint or prompt that cannot be read, an
output that cannot be written); 1 each command's own failure: sample.py's run failed (NaN or infinite logits,
an error of torch's), compare.py's comparison failed; 130 interrupted.
Framework-neutral like the rest of weights/: nothing here imports torch.
"""

import argparse
import contextlib
import math
import os
import stat
import sys

from . import files


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


# Far above any real prompt: a model sees only its last block_size tokens (1024 for GPT-2, a few KiB of text).
PROMPT_LIMIT = 8 * 2**20


def read_prompt(start: str) -> str:
    """The prompt: start itself, or with start = FILE:path the text of that UTF-8 file (a regular file of at
    most PROMPT_LIMIT bytes: see weights/files.py).

    Raises ValueError with a one-line message when the file cannot be read or is not UTF-8."""
    if not start.startswith("FILE:"):
        return start
    path = start[len("FILE:"):]
    data = files.read_regular_file(path, PROMPT_LIMIT, "the prompt file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"the prompt file {path} is not UTF-8 text") from None


def fail(prog: str, message, status: int = 2):
    """Exit with status and one line on stderr: the first line of message (torch's errors run to several)."""
    print(f"{prog}: error: {(str(message).strip().splitlines() or ['unknown error'])[0]}", file=sys.stderr)
    raise SystemExit(status)


def output_path_problem(path: str) -> str | None:
    """Why a file could not be written at path, or None: checked before a long computation, without creating it.

    The parent is taken lexically (os.path.abspath), not resolved: resolving a symlink loop raises."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as e:  # a symlink loop, a path through a file, a directory that may not be searched
        return e.strerror
    if mode is not None and stat.S_ISDIR(mode):
        return "is a directory"
    if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):  # /dev/null and /dev/full are fine
        return "is not a regular file (a FIFO or socket: opening it would wait for a reader)"
    parent = os.path.dirname(os.path.abspath(path))
    if mode is None and not os.path.isdir(parent):
        return f"no such directory {parent}"
    # effective_ids: the ids the write will be made with; root may write anywhere, so for root this never refuses
    if not os.access(path if mode is not None else parent, os.W_OK, effective_ids=True):
        return "permission denied"
    return None


class OutputError(Exception):
    """Standard output could not be written (a full disk, a descriptor not open for writing). One line."""


@contextlib.contextmanager
def writing_stdout():
    """Turn an OSError while writing standard output into OutputError. A broken pipe stays itself: a reader
    that went away (`| head`) gets no message, and run() ends quietly with status 1 (the text was not all
    written)."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as e:
        raise OutputError(f"cannot write to standard output: {e.strerror or e}") from None


def run(prog: str, main):
    """Run a command's main() -> exit status, as its __main__, and exit.

    Standard output is written as UTF-8, whatever the locale or PYTHONIOENCODING says: GPT-2's tokens are
    UTF-8 bytes, and an ASCII locale must not turn a sample into a UnicodeEncodeError. Characters that UTF-8
    cannot hold (lone surrogates, which a command line that is not UTF-8 leaves in a path) are written as
    backslash escapes. A closed standard output is refused before any work; when writing it fails later, it is
    pointed at /dev/null, so that the interpreter's last flush at exit adds no second message."""
    if sys.stdout is None:  # started with stdout closed (`>&-`)
        print(f"{prog}: error: standard output is closed; redirect it to a file or to /dev/null", file=sys.stderr)
        sys.exit(2)
    sys.stdout.reconfigure(encoding="utf-8", errors="backslashreplace")
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        _keep_printed()
        sys.exit(130)
    except MemoryError as e:  # NumPy's says how much it could not allocate: "Unable to allocate 29.3 GiB for ..."
        _keep_printed()
        reason = (str(e).strip().splitlines() or ["MemoryError"])[0]
        print(f"{prog}: error: out of memory ({reason}); try a smaller model, batch or dtype", file=sys.stderr)
        sys.exit(1)
    except BrokenPipeError:
        _stdout_to_devnull()
        sys.exit(1)
    except OutputError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        _stdout_to_devnull()
        sys.exit(2)


def _keep_printed():
    """Flush standard output: what was printed so far stays printed."""
    with contextlib.suppress(OSError):
        sys.stdout.flush()


def _stdout_to_devnull():
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
