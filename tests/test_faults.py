"""Fault injection (issue 8): real `bitconv` conversions interrupted at seeded random points.

SIGINT, SIGKILL, a full disk (a tmpfs filled mid-write → ENOSPC, and RLIMIT_FSIZE → EFBIG), a source
shard deleted mid-run and a read-only output folder, for GGUF (f16, q8_0), ONNX (int8) and
safetensors (compressed-tensors int8). After each: nothing at the output path unless it is
byte-identical to a clean run that `bitconv validate --json` passed, one line on stderr and no
traceback, no temp left after a clean error, and after SIGKILL the next run removes the dead run's
temps and succeeds. The harness is tests/faults.py; `python benchmarks/faults.py` runs many more.
"""
from __future__ import annotations

import os
import random
import signal
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

import faults as F

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals, mounts and rlimits: Linux")]

JOB_NAMES = list(F.JOBS)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with F.scratch(tmp_path_factory.mktemp("faults")) as d:
        yield d


@pytest.fixture(scope="module")
def big(checkpoint_factory: Callable[..., Path]) -> Path:
    """~670 MB of f32 weights (the Ctrl-C test's checkpoint): a conversion takes 1.5-2.5 s here."""
    return checkpoint_factory("qwen2", "f32", 1, "hub", hidden=512, layers=4)


@pytest.fixture(scope="module")
def refs(big: Path, work: Path) -> Callable[[str], F.Reference]:
    """A clean, validated run per job (its duration spaces the random points; its bytes judge
    whatever a faulted run leaves)."""
    cache: dict[str, F.Reference] = {}

    def get(name: str) -> F.Reference:
        if name not in cache:
            cache[name] = F.make_reference(F.JOBS[name], big, work, in_process=True)
        return cache[name]

    return get


def _assert_clean(t: F.Tally, injected: int) -> None:
    assert t.injected == injected
    assert t.partial == 0, t.summary()
    assert t.tracebacks == 0, t.summary()
    assert t.stray == 0, t.summary()
    assert not t.failures, t.summary()


#: 8 injections: before the first tensor ("start"), anywhere ("t"), once the data is all staged ("end":
#: the fsync / rename / manifest)
SIGINT_MODES = {"gguf-f16": ("start", "t", "end"), "gguf-q8_0": ("t",), "onnx-int8": ("t", "end"),
                "st-int8": ("start", "end")}


@pytest.mark.parametrize("job", JOB_NAMES)
def test_sigint_at_random_points(job: str, big: Path, refs: Callable[[str], F.Reference], work: Path) -> None:
    """Exit 130 with one 'interrupted, nothing written' line and nothing left; or, when the signal
    came after the rename, the complete artifact and a line that says so (or exit 0)."""
    ref, rng, t = refs(job), random.Random(f"sigint-{job}"), F.Tally()
    for i, mode in enumerate(SIGINT_MODES[job]):
        t.add(F.inject_signal(F.JOBS[job], big, ref, work, signal.SIGINT, rng, f"int-{job}-{i}", mode=mode))
    _assert_clean(t, len(SIGINT_MODES[job]))


@pytest.mark.parametrize("job", JOB_NAMES)
def test_sigkill_at_random_points(job: str, big: Path, refs: Callable[[str], F.Reference], work: Path) -> None:
    """Two kills into one folder (the second run meets the first one's temp), then the next run
    removes every dead run's temp and writes the same bytes as a clean run."""
    t = F.kill_chain(F.JOBS[job], big, refs(job), work, random.Random(f"sigkill-{job}"), f"kill-{job}", 2)
    _assert_clean(t, 2)
    assert t.next_runs == 1 and t.next_ok == 1, t.summary()


@pytest.mark.parametrize("job", JOB_NAMES)
def test_disk_full(job: str, big: Path, refs: Callable[[str], F.Reference], work: Path) -> None:
    """ENOSPC mid-write (a tmpfs filled while the child is stopped; when this process may mount
    one) and EFBIG (RLIMIT_FSIZE below the largest output file): exit 2, one 'disk full' / 'file
    too large' line, no artifact, no temp, no folder."""
    ref, rng, t = refs(job), random.Random(f"disk-{job}"), F.Tally()
    mounted = F.tmpfs_available(work)
    if mounted:
        t.add(F.inject_disk_full_tmpfs(F.JOBS[job], big, ref, work, rng, f"enospc-{job}"))
    t.add(F.inject_fsize(F.JOBS[job], big, ref, work, rng, f"efbig-{job}"))
    _assert_clean(t, 1 + mounted)
    assert set(t.exit_codes) == {2}


def test_efbig_is_a_clean_error(tmp_path: Path) -> None:
    """The translation itself: EFBIG, ENOSPC, EDQUOT and numpy's errno-less short write."""
    import errno

    from bitconv.formats.atomic import write_error

    for code, phrase in ((errno.EFBIG, "file too large"), (errno.ENOSPC, "disk full"), (errno.EDQUOT, "disk full"),
                         (errno.EROFS, "cannot write")):
        err = write_error(OSError(code, os.strerror(code)), tmp_path / "x.gguf")
        assert err is not None and phrase in str(err) and err.exit_code == 2
    assert write_error(OSError(errno.EIO, "I/O error"), tmp_path / "x.gguf") is None


@pytest.fixture(scope="module")
def sharded(checkpoint_factory: Callable[..., Path]) -> Path:
    return checkpoint_factory("qwen2", "bf16", 2, "hub")


def test_source_shard_deleted_mid_run(sharded: Path, work: Path) -> None:
    """The shard with lm_head (written last) deleted once the temp output exists: exit 2, one line
    naming the shard, nothing written."""
    job, rng, t = F.JOBS["gguf-f16"], random.Random("shard"), F.Tally()
    last = F.last_shard(sharded)
    for i in range(2):
        t.add(F.inject_shard_deleted(job, sharded, None, work, rng, f"shard-{i}", shard=last))
    _assert_clean(t, 2)
    assert set(t.exit_codes) == {2}, t.exit_codes


@pytest.mark.parametrize("during", [False, True], ids=["from-start", "mid-run"])
def test_read_only_output_folder(during: bool, big: Path, refs: Callable[[str], F.Reference], work: Path) -> None:
    """Read-only for root too (a read-only bind mount here; else the child as nobody, else chattr +i):
    exit 2, one line, no artifact; mid-run the next run (folder writable again) removes the temp."""
    how = F.read_only_mechanism(work)
    if how == "none":
        pytest.skip("root without a bind mount, chattr or an interpreter nobody may run: nothing stops root's writes")
    if during and how not in ("bind", "immutable"):
        pytest.skip(f"making the folder read-only mid-run needs a bind mount or chattr (have: {how})")
    t = F.Tally()
    t.add(F.inject_read_only(F.JOBS["gguf-q8_0"], big, work, random.Random(f"ro-{during}"), f"ro-{during}",
                             during=during, how=how, ref=refs("gguf-q8_0") if during else None))
    _assert_clean(t, 1)
    assert set(t.exit_codes) <= {2, 0} if during else {2}, t.summary()
