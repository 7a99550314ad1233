"""LRU store of encoded prefixes under a memory budget; finds the longest cached prefix of new tokens."""
from __future__ import annotations

from collections import OrderedDict

from duomem_fast.engine.kv import Prefix


class PrefixStore:
    """Same tokens -> same Prefix; least recently used prefixes are dropped beyond `budget_bytes`.

    Dropping only forgets the store's reference: sessions still holding a prefix keep it alive.
    """

    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes <= 0:
            raise ValueError(f"prefix budget_bytes must be > 0, got {budget_bytes}")
        self.budget = budget_bytes
        self._items: OrderedDict[tuple[int, ...], Prefix] = OrderedDict()

    def get(self, tokens: tuple[int, ...]) -> Prefix | None:
        item = self._items.get(tokens)
        if item is not None:
            self._items.move_to_end(tokens)
        return item

    def longest_prefix_of(self, tokens: tuple[int, ...]) -> Prefix | None:
        """The longest cached prefix whose tokens start `tokens` (strictly shorter), or None."""
        best = None
        for key, item in self._items.items():
            if 0 < len(key) < len(tokens) and (best is None or len(key) > len(best)) and tokens[:len(key)] == key:
                best = item
        if best is not None:
            self._items.move_to_end(best.tokens)
        return best

    def put(self, prefix: Prefix) -> None:
        self._items[prefix.tokens] = prefix
        self._items.move_to_end(prefix.tokens)
        while self.nbytes > self.budget and len(self._items) > 1:
            self._items.popitem(last=False)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, tokens: tuple[int, ...]) -> bool:
        return tokens in self._items
