"""duomem_fast.timing's cold-cache helpers: last-level cache size from the machine, copy count, rotation."""
from pathlib import Path

import pytest

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
