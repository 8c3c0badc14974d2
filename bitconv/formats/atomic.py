"""Atomic outputs: write to `.<name>.bitconv-tmp.<pid>` beside the target, fsync, rename.

A process that writes for a cluster (a Ray task, on storage every node mounts) names its temps
`.<name>.bitconv-tmp.<node>-<pid>`: stale-temp clean-up judges only its own node's temps (another
node's process ids mean nothing here), and the cluster's driver sweeps each node's leftovers there.

A crash, Ctrl-C or a full disk leaves no partial artifact at the output path; stale temp files of
dead processes are removed by the next run. The rename itself is shielded from Ctrl-C (the
interrupt is taken right after it), so an interrupted run either wrote nothing or wrote the whole
artifact — and `interrupted_message()` says which.
"""
from __future__ import annotations

import errno
import os
import re
import resource
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..errors import BitconvError, Interrupted, OutputError

TMP_MARK = ".bitconv-tmp."

#: artifacts this process renamed into place (what an interrupt after them leaves behind)
_COMMITTED: list[Path] = []
#: the cluster node this process writes for (None: a local run); see the module doc
_NODE: str | None = None


def set_temp_node(node: str | None) -> None:
    """Tag this process's temp names with `node` (letters and digits), or stop tagging them (None)."""
    global _NODE
    if node is not None and not re.fullmatch(r"[0-9A-Za-z]+", node):
        raise ValueError(f"a node tag is letters and digits, not {node!r}")
    _NODE = node


def temp_owner() -> str:
    """The suffix of this process's temp names: `<pid>`, or `<node>-<pid>` for a cluster task."""
    return f"{_NODE}-{os.getpid()}" if _NODE else str(os.getpid())


def temp_owner_of(name: str) -> tuple[str | None, int] | None:
    """(node or None, pid) of a temp name, or None when it carries no owner."""
    node, _, pid = name.rsplit(".", 1)[-1].rpartition("-")
    if not pid.isdigit() or (node and not node.isalnum()):
        return None
    return node or None, int(pid)


def temp_path_for(path: Path) -> Path:
    return path.parent / f".{path.name}{TMP_MARK}{temp_owner()}"


def committed_outputs() -> list[Path]:
    """The artifacts (files or folders) this process has renamed into place so far."""
    return list(_COMMITTED)


def interrupted_message() -> str:
    """The one line for Ctrl-C: nothing written, or what was complete before the interrupt."""
    if not _COMMITTED:
        return "interrupted, nothing written"
    return "interrupted after writing " + ", ".join(str(p) for p in _COMMITTED) + " (complete); nothing else written"


@contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C while the block runs (a rename and its bookkeeping); a Ctrl-C that came meanwhile
    is raised as KeyboardInterrupt right after it. Only in the main thread with Python's default
    handler in place (else the block runs as is)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    pending: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _discard(p: Path) -> None:
    """Remove a temp file or folder; never raises (a read-only folder: the next run removes it)."""
    try:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    except OSError:
        pass


def remove_stale_temps(folder: Path, pattern: str = f".*{TMP_MARK}*", *, dead_nodes: frozenset[str] = frozenset()
                       ) -> list[Path]:
    """Remove temp files and folders (`<…>.<pid>`) that dead processes of this node (or of a local
    run, for a local run) left in `folder`, and any temps of `dead_nodes` (cluster nodes that are
    gone). Returns what was removed."""
    try:
        found = list(folder.glob(pattern))
    except OSError:
        return []
    removed = []
    for p in found:
        owner = temp_owner_of(p.name)
        if owner is None:
            continue
        node, pid = owner
        if (node is not None and node in dead_nodes) or \
                (node == _NODE and pid != os.getpid() and not pid_alive(pid)):
            _discard(p)
            removed.append(p)
    return removed


def is_temp_name(name: str) -> bool:
    """A bitconv temp file or staging folder (this run's or a dead one's)."""
    return TMP_MARK in name or name.startswith(".bitconv-onnx-tmp.")


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


def _files_under(paths: Iterable[Path]) -> Iterator[Path]:
    for p in paths:
        try:
            if p.is_dir():
                yield from (f for f in p.rglob("*") if f.is_file())
            elif p.is_file():
                yield p
        except OSError:
            continue


def _short_write_errno(e: OSError, folder: Path, written: Iterable[Path]) -> int | None:
    """The likely errno of a failed write that lost it: numpy's `tofile` raises a bare OSError
    ("N requested and M written", "Not enough free space to write N bytes ...")."""
    nums = [int(n) for n in re.findall(r"\d+", str(e))]
    requested = nums[0] if nums else 0
    try:
        st = os.statvfs(folder)
        if min(st.f_bavail, st.f_bfree) * st.f_frsize < requested + (1 << 20):
            return errno.ENOSPC
    except OSError:
        pass
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:
        for f in _files_under(written):
            try:
                if f.stat().st_size + requested > limit:
                    return errno.EFBIG
            except OSError:
                continue
    return None


def write_error(e: OSError, target: Path, written: Iterable[Path] = (), *, suffix: str = "; nothing written"
                ) -> BitconvError | None:
    """The one-line error for an OSError met while writing `target` (its temp files: `written`),
    or None when it is not a write problem a user can act on."""
    code = e.errno
    if code is None:
        folder = target if target.is_dir() else target.parent
        code = _short_write_errno(e, folder, written)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(f"disk full while writing {target}{suffix}")
    if code == errno.EFBIG:
        return OutputError(f"file too large while writing {target}: over the file size limit (ulimit -f) or the "
                           f"file system's largest file{suffix}")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"cannot write {target}: {e.strerror or os.strerror(code)}{suffix}")
    return None


@contextmanager
def atomic_output(path: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temp path to write; on success it becomes `path`, on any failure it disappears."""
    check_output_path(path, force)
    remove_stale_temps(path.parent)
    tmp = temp_path_for(path)
    try:
        yield tmp
        fsync_path(tmp)
        with sigint_deferred():
            os.replace(tmp, path)
            _COMMITTED.append(path)
            fsync_path(path.parent)
    except KeyboardInterrupt:
        _discard(tmp)
        raise Interrupted(interrupted_message()) from None
    except OSError as e:
        err = write_error(e, path, [tmp])  # before the temp goes: it looks at its size and the free space
        _discard(tmp)
        if err is not None:
            raise err from e
        raise
    except BaseException:
        _discard(tmp)
        raise


@contextmanager
def atomic_outputs(paths: list[Path], *, force: bool = False) -> Iterator[list[Path]]:
    """`atomic_output` for a set of files that only make sense together (a split GGUF): yield one
    temp path per file; on success all are renamed into place at once (Ctrl-C held meanwhile, a
    failed rename undoes the others), on any failure none of them appears."""
    for p in paths:
        check_output_path(p, force)
    for folder in {p.parent for p in paths}:
        remove_stale_temps(folder)
    temps = [temp_path_for(p) for p in paths]
    renamed: list[Path] = []
    try:
        yield temps
        for tmp in temps:
            fsync_path(tmp)
        with sigint_deferred():
            for tmp, p in zip(temps, paths):
                os.replace(tmp, p)
                renamed.append(p)
            _COMMITTED.extend(paths)
            renamed.clear()  # the set is in place: a failure from here on removes nothing
            for folder in {p.parent for p in paths}:
                fsync_path(folder)
    except KeyboardInterrupt:
        for tmp in temps:
            _discard(tmp)
        raise Interrupted(interrupted_message()) from None
    except BaseException as e:
        err = write_error(e, paths[0], temps) if isinstance(e, OSError) else None
        for f in [*temps, *renamed]:
            _discard(f)
        if err is not None:
            raise err from e
        raise


def commit_staged(pairs: list[tuple[Path, Path]], *, force: bool = False) -> None:
    """Rename finished files (written and synced elsewhere on the same file system: a staging folder
    that cluster tasks wrote into) to their targets together, as `atomic_outputs` commits a set:
    Ctrl-C held meanwhile, a failed rename undoes the others."""
    for _, target in pairs:
        check_output_path(target, force)
    renamed: list[Path] = []
    try:
        with sigint_deferred():
            for staged, target in pairs:
                os.replace(staged, target)
                renamed.append(target)
            _COMMITTED.extend(target for _, target in pairs)
            renamed.clear()
            for folder in {target.parent for _, target in pairs}:
                fsync_path(folder)
    except BaseException as e:
        for f in renamed:
            _discard(f)
        err = write_error(e, pairs[0][1], suffix="; nothing written") if isinstance(e, OSError) else None
        if err is not None:
            raise err from e
        raise


def write_text_atomic(path: Path, text: str) -> None:
    tmp = temp_path_for(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        fsync_path(tmp)
        with sigint_deferred():
            os.replace(tmp, path)
            _COMMITTED.append(path)
    except OSError as e:
        err = write_error(e, path, [tmp], suffix="")  # a typed, one-line error, not an "internal error"
        _discard(tmp)
        if err is not None:
            raise err from e
        raise
    except BaseException:
        _discard(tmp)
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
            with sigint_deferred():
                for p, tmp in temps.items():
                    os.replace(tmp, p)
                    _COMMITTED.append(p)

        yield commit
    finally:
        for tmp in temps.values():
            _discard(tmp)


@contextmanager
def folder_write_errors(folder: Path, cleanup: Callable[[], None],
                        written: Callable[[], Iterable[Path]] = lambda: ()) -> Iterator[None]:
    """Around the staging of an output folder: any failure runs `cleanup` first; Ctrl-C, a full
    disk, a file size limit and a permission problem become one-line bitconv errors."""
    try:
        yield
    except KeyboardInterrupt:
        cleanup()
        raise Interrupted(interrupted_message()) from None
    except OSError as e:
        staged = list(written())
        err = write_error(e, folder, staged)  # before cleanup: it looks at the staged files' sizes
        cleanup()
        if err is not None:
            raise err from e
        raise
    except BaseException:
        cleanup()
        raise


@contextmanager
def staged_folder(folder: Path, stage_name: str = "stage",
                  legacy_patterns: tuple[str, ...] = ()) -> Iterator[tuple[Path, Callable[[list[str]], None]]]:
    """Yield (a staging folder, commit(names)) for a folder export; nothing is visible at `folder`
    before commit.

    A new `folder`: the stage is `.<name>.bitconv-tmp.<pid>` beside it and commit renames the whole
    stage to `folder` (one atomic rename). An existing folder (--force): the stage is
    `.<stage_name>.bitconv-tmp.<pid>` inside it and commit renames `names` into it in that order (the
    file that makes the folder loadable last). On any failure the stage goes; stale stages of dead
    processes (beside or inside `folder`) are removed first. Ctrl-C is held during the renames."""
    created = not folder.exists()
    remove_stale_temps(folder.parent)
    if not created:
        remove_stale_temps(folder)
        for pattern in legacy_patterns:
            remove_stale_temps(folder, pattern)
    stage = temp_path_for(folder) if created else folder / f".{stage_name}{TMP_MARK}{temp_owner()}"
    _discard(stage)

    def commit(names: list[str]) -> None:
        for n in names:
            fsync_path(stage / n)
        with sigint_deferred():
            if created:
                fsync_path(stage)
                try:
                    os.rename(stage, folder)
                except OSError as e:
                    if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                        raise OutputError(f"{folder} appeared while bitconv was writing it; nothing written") from e
                    raise
            else:
                for n in names:
                    (folder / n).parent.mkdir(parents=True, exist_ok=True)  # 1_Pooling/config.json
                    os.replace(stage / n, folder / n)
            _COMMITTED.append(folder)
            fsync_path(folder.parent if created else folder)

    with folder_write_errors(folder, lambda: _discard(stage), lambda: [stage]):
        stage.mkdir()
        yield stage, commit
    if stage.exists():  # an existing folder's stage, emptied by commit (or a failure after it)
        _discard(stage)
