"""bitconv/quant/torch_sum.py against the installed torch: the float32 sum and mean of a tensor,
bit for bit, for every size regime of torch's cascade sum and two-pass parallel reduction, at
several intra-op thread counts (the result depends on them)."""
from __future__ import annotations

import numpy as np
import pytest

from bitconv.quant.torch_sum import GRAIN, FlatParts, torch_mean, torch_sum, torch_sum_of

torch = pytest.importorskip("torch")

# < 8 (1 lane), vector tails, one/several cascade blocks, around GRAIN, several chunks, the
# tiny-model shapes (128·256 … 768·256), a level-2 cascade group (16³ rows of 32 floats) and beyond
SIZES = [1, 3, 4, 7, 8, 9, 31, 33, 100, 511, 513, 4097, GRAIN - 1, GRAIN, GRAIN + 1, 65536, 65537,
         128 * 256, 256 * 768, 131072 + 4 * 32 + 5, 300007, 1 << 20]
THREADS = [1, 2, 3, 5, 16]


@pytest.fixture
def torch_threads():
    """torch.set_num_threads for one test, restored afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _data(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.abs(rng.standard_normal(n, dtype=np.float32) * np.float32(rng.uniform(1e-3, 1e2)))


@pytest.mark.parametrize("threads", THREADS)
def test_sum_and_mean_equal_torch_bit_for_bit(threads, torch_threads):
    torch_threads(threads)
    differs_from_numpy = 0
    for i, n in enumerate(SIZES):
        x = _data(n, 1000 * threads + i)
        t = torch.from_numpy(x)
        want_sum, want_mean = np.float32(t.sum().item()), np.float32(t.mean().item())
        assert torch_sum(x, threads).tobytes() == want_sum.tobytes(), (n, threads)
        assert torch_mean(x, threads).tobytes() == want_mean.tobytes(), (n, threads)
        differs_from_numpy += np.float32(x.sum(dtype=np.float32)) != want_sum
    assert differs_from_numpy  # numpy's own order is not torch's: the test would notice a shortcut


def test_thread_count_changes_the_last_bit(torch_threads):
    """Why `threads` exists: torch's sum of one array differs between thread counts."""
    values = set()
    x = _data(256 * 768, 7)
    for threads in (1, 2, 3, 4, 6):
        torch_threads(threads)
        got = torch_sum(x, threads)
        assert got == np.float32(torch.from_numpy(x).sum().item())
        values.add(got.tobytes())
    assert len(values) > 1


@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 4])
def test_large_tensor_with_a_wider_cascade_step(threads, torch_threads):
    """≥ 2²⁰ rows of 32 floats: torch's cascade blocks grow from 16 to 32 rows."""
    torch_threads(threads)
    x = _data((1 << 25) + 12345, 11)
    assert torch_sum(x, threads) == np.float32(torch.from_numpy(x).sum().item())


def test_flat_parts_read_like_one_array():
    rng = np.random.default_rng(3)
    sizes = [0, 5, 40000, 0, 1, 70000, 3]
    parts = [_data(n, i) for i, n in enumerate(sizes)]
    joined = np.concatenate(parts)
    flat = FlatParts(parts)
    assert flat.size == joined.size
    for _ in range(50):
        lo = int(rng.integers(0, joined.size))
        hi = int(rng.integers(lo, joined.size + 1))
        assert np.array_equal(flat.take(lo, hi), joined[lo:hi])
    for threads in (1, 2, 5):
        assert torch_sum_of(flat.take, flat.size, threads) == torch_sum(joined, threads)


def test_threads_must_be_positive():
    with pytest.raises(ValueError):
        torch_sum(np.ones(4, np.float32), 0)


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_c_pass_over_parts_equals_torch(threads, torch_threads):
    """The extension's one pass (|x| summed while read, the parts never joined) gives torch's bits,
    as the numpy emulation does; a tensor's row chunks may end anywhere in a 32-float row."""
    from bitconv.accel.kernels import torch_serial_sum
    from bitconv.quant.torch_sum import torch_sum_of_parts

    if torch_serial_sum is None:
        pytest.skip("the C extension is not built")
    torch_threads(threads)
    rng = np.random.default_rng(threads)
    for n in SIZES:
        x = rng.standard_normal(n, dtype=np.float32)
        parts = np.split(x, sorted(rng.integers(0, n + 1, size=3)))
        want = np.float32(torch.from_numpy(np.abs(x)).sum().item())
        assert torch_sum_of_parts(parts, threads, absolute=True) == want, n
        assert torch_sum_of_parts([np.abs(x)], threads) == want, n
