"""Atomic outputs: write to `.<name>.bitconv-tmp.<pid>` beside the target, fsync, rename.

A crash, Ctrl-C or a full disk leaves no partial artifact at the output path; stale temp files of
dead processes are removed by the next run.
"""
from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from ..errors import Interrupted, OutputError

TMP_MARK = ".bitconv-tmp."


def temp_path_for(path: Path) -> Path:
    return path.parent / f".{path.name}{TMP_MARK}{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: Path, pattern: str = f".*{TMP_MARK}*") -> None:
    """Remove temp files and folders (`<…>.<pid>`) that dead processes left in `folder`."""
    for p in folder.glob(pattern):
        try:
            pid = int(p.name.rsplit(".", 1)[1])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def check_output_path(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise OutputError(f"{path} already exists; pass --force to overwrite it")
    if path.exists() and path.is_dir():
        raise OutputError(f"{path} is a directory")
    parent = path.parent
    if not parent.is_dir():
        raise OutputError(f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output folder {parent} is not writable")


def check_free_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OutputError(f"not enough disk space in {folder}: the output needs {needed / 2**20:,.1f} MiB, "
                          f"{free / 2**20:,.1f} MiB free")


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_output(path: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temp path to write; on success it becomes `path`, on any failure it disappears."""
    check_output_path(path, force)
    remove_stale_temps(path.parent)
    tmp = temp_path_for(path)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except KeyboardInterrupt:
        tmp.unlink(missing_ok=True)
        raise Interrupted("interrupted, nothing written") from None
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutputError(f"disk full while writing {path}; nothing written") from e
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise OutputError(f"cannot write {path}: {e.strerror}") from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    tmp = temp_path_for(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        fsync_path(tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):  # a typed, one-line error, not an "internal error"
            raise OutputError(f"disk full while writing {path}") from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def staged_texts(files: dict[Path, str]) -> Iterator[Callable[[], None]]:
    """Companion files of an artifact (kernel configs): written to temp files on entry, renamed into
    place by the yielded function; removed if the block fails before that."""
    temps = {p: temp_path_for(p) for p in files}
    try:
        for p, text in files.items():
            temps[p].write_text(text, encoding="utf-8")
            fsync_path(temps[p])

        def commit() -> None:
            for p, tmp in temps.items():
                os.replace(tmp, p)

        yield commit
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)


@contextmanager
def folder_write_errors(folder: Path, cleanup: Callable[[], None]) -> Iterator[None]:
    """Around the staging of an output folder: any failure runs `cleanup` first; Ctrl-C, a full
    disk and a permission problem become one-line bitconv errors."""
    try:
        yield
    except KeyboardInterrupt:
        cleanup()
        raise Interrupted("interrupted, nothing written") from None
    except OSError as e:
        cleanup()
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutputError(f"disk full while writing {folder}; nothing written") from e
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise OutputError(f"cannot write {folder}: {e.strerror}") from e
        raise
    except BaseException:
        cleanup()
        raise
