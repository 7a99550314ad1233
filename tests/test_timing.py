"""duomem_fast.timing's cold-cache helpers: last-level cache size from the machine, copy count, rotation."""
from pathlib import Path

import pytest
import torch

from duomem_fast import ops, timing


def test_llc_bytes_matches_sysfs_or_lscpu():
    llc = timing.llc_bytes()
    caches = list(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"))
    if not caches:
        pytest.skip("no /sys cache description on this machine")
    top = max(caches, key=lambda d: int((d / "level").read_text()))
    size = (top / "size").read_text().strip()
    assert llc == int(size[:-1]) * {"K": 1024, "M": 1 << 20}[size[-1]]
    assert timing._llc_from_lscpu() == llc


def test_cold_copies_cover_the_cache():
    llc = 32 << 20
    assert timing.cold_copies(1327104, llc) == 102          # 576x576 fp32: 102 copies = 129 MiB >= 4 x 32 MiB
    assert timing.cold_copies(113 << 20, llc) == 2          # lm_head: two copies cover 4 x 32 MiB
    assert timing.cold_copies(200 << 20, llc) == 1          # one copy already overflows 4x the cache
    assert timing.cold_copies(1 << 20, llc, factor=1.0) == 32
    with pytest.raises(ValueError):
        timing.cold_copies(0, llc)


def test_rotate_cycles_in_order():
    calls = []
    f = timing.rotate([lambda i=i: calls.append(i) or i for i in range(3)])
    assert [f() for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    g = lambda: 5  # noqa: E731
    assert timing.rotate([g]) is g
    with pytest.raises(ValueError):
        timing.rotate([])


def test_machine_info_has_llc():
    info = timing.machine_info()
    assert info["llc_bytes"] == timing.llc_bytes()
    assert info["cpu_isa"] == ops.cpu_isa()


def _xor_words(tensors) -> int:
    """read_bytes' reference: each tensor's bytes zero-padded to 8, as little-endian 64-bit words, all XORed."""
    import numpy as np
    out = 0
    for t in tensors:
        raw = t.contiguous().view(torch.uint8).numpy().tobytes()
        raw += b"\0" * (-len(raw) % 8)
        out ^= int(np.bitwise_xor.reduce(np.frombuffer(raw, dtype="<u8"))) if raw else 0
    return out


@pytest.mark.skipif(not ops.HAS_NATIVE, reason="read_bytes is native")
@pytest.mark.parametrize("threads", [1, 2])
def test_read_bytes_reads_every_byte(threads):
    torch.manual_seed(0)
    ts = [torch.randn(576, 576), torch.randn(16, 111, dtype=torch.bfloat16),  # odd tails: 3,552 and 77 bytes
          torch.randint(0, 256, (77,), dtype=torch.uint8), torch.randn(300_000)]  # 1.2 MB: 19 chunks for the threads
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert timing.read_bytes(ts) == _xor_words(ts) == timing.read_bytes(ts, ahead=2048)
        assert timing.read_bytes(ts[:1]) == _xor_words(ts[:1]) != _xor_words(ts)
        flip = ts[3].clone()
        flip.view(torch.uint8)[-1] ^= 1  # the last byte of the last chunk
        assert timing.read_bytes([flip]) == timing.read_bytes(ts[3:]) ^ (1 << 56)
        assert timing.read_bytes([]) == 0
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not ops.HAS_NATIVE, reason="read_bytes is native")
def test_read_bytes_rejects_strided_and_names_it():
    with pytest.raises(RuntimeError, match="tensor 1 is not contiguous"):
        timing.read_bytes([torch.zeros(4), torch.zeros(8, 8).t()])
    with pytest.raises(ValueError, match="ahead >= 0"):
        timing.read_bytes([torch.zeros(4)], ahead=-1)
