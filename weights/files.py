"""Reading the small files a user names (a prompt, a config.json) without trusting what the path is.

open() on a FIFO waits for a writer that may never come, and /dev/zero or /dev/urandom never end: a path is
read only if it is a regular file, and only up to a limit, so no path can hang a command or exhaust its memory.
"""

import os
import stat

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))  # fmt: skip


def kind(mode: int) -> str:
    """What an st_mode that is not a regular file's is, for messages: 'a directory', 'a FIFO (named pipe)', ..."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def mib(size: int) -> str:
    return f"{size / 2**20:.3g} MiB"


def read_regular_file(path, limit: int, what: str) -> bytes:
    """The bytes of the regular file at path, refused if there are more than limit of them.

    Raises ValueError with one line that names `what` (e.g. "the prompt file") and path: not a regular file,
    larger than limit, or the reason an OSError gives (no such file, permission denied, a symlink loop, ...).
    """
    try:
        status = os.stat(path)  # before open(): opening a FIFO blocks, and opening a device can have effects
        if not stat.S_ISREG(status.st_mode):
            raise ValueError(f"{what} {path} is {kind(status.st_mode)}, not a regular file")
        if status.st_size > limit:
            raise ValueError(f"{what} {path} is {mib(status.st_size)}, more than the limit of {mib(limit)}")
        # Should the path be replaced by a FIFO after the stat, O_NONBLOCK makes open() return at once, and the
        # fstat refuses it; for a regular file the flag changes nothing.
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise ValueError(f"{what} {path} is {kind(mode)}, not a regular file")
            data = f.read(limit + 1)  # a file that grew since the stat is still read no further than this
    except OSError as e:
        raise ValueError(f"cannot read {what} {path}: {e.strerror}") from None
    if len(data) > limit:
        raise ValueError(f"{what} {path} is more than the limit of {mib(limit)}")
    return data
