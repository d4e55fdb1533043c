"""Finished joins, remembered compactly so that a duplicate is recognised whenever it comes.

Every request of the last ``max_age`` of event time is remembered: at 1,000 requests/s and
the default 10 minutes that is 600,000 per joiner. As Python objects (a dict entry, the
request_id string, a small record and a heap entry) they cost about 370 bytes each, and the
joiner's memory grew by 220 MB while the horizon filled. Here a finished join is 14 bytes in
an open-addressing hash table of flat arrays:

* the key is a 64-bit BLAKE2b digest of the request_id (stable across processes, so the
  changelog can name it). Two different ids of one partition share a digest within one
  horizon with probability about n^2 / 2^65 (n = 600,000: about 1e-8); the later one is then
  counted as a duplicate or late answer of the earlier, which the docs state;
* when it may be forgotten, in whole seconds of event time (``forget_s``, rounded up, so the
  moment is a function of the events alone, whatever the batching);
* what the join had (request seen, primary seen, which candidates) as a 16-bit index into a
  table of the distinct combinations, of which there are few.

Forgetting is logical: an entry whose ``forget_s`` the watermark passed reads as absent at
once, and its slot is reclaimed later, in bulk, when the table fills. The changelog gets one
segment record per time bucket and batch (the entries that changed, packed), and a bucket's
segments are tombstoned together once the watermark has passed the whole bucket: about one
record per batch instead of two per request.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from array import array
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

__all__ = ["Finished", "FinishedStore", "digest"]

#: seconds of forget time per changelog bucket
BUCKET_S = 10
#: entries per changelog segment record: 14 bytes each, well under a Kafka message
SEGMENT_MAX = 20_000
_DELETED = 0xFFFF
_MAX_FILL = 0.7
_HEAD = struct.Struct(">II")  # entries, length of the combinations JSON
_SEG_KEY = struct.Struct(">qI")  # bucket, sequence


def digest(rid: str) -> int:
    """The 64-bit key of a request_id: never 0 (0 marks an empty slot)."""
    h = int.from_bytes(hashlib.blake2b(rid.encode(), digest_size=8).digest(), "little")
    return h or 1


class Finished(NamedTuple):
    """What a closed join had: read from the store, written back with ``put``."""

    forget_s: int
    req: bool
    prim: bool
    models: tuple[str, ...]


Combo = tuple[bool, bool, tuple[str, ...]]


class FinishedStore:
    """Finished joins by digest; see the module docstring."""

    def __init__(self, capacity: int = 1 << 12) -> None:
        self._alloc(capacity)
        self._combos: list[Combo] = []
        self._combo_ix: dict[Combo, int] = {}
        #: the watermark of the last ``forget`` call: entries it passed read as absent
        self.wm: int | None = None
        #: digests changed since the last ``changes`` call
        self.dirty: set[int] = set()
        #: changelog segments written per bucket, to tombstone when the bucket is over
        self._segments: dict[int, list[int]] = {}
        self._seq = 0
        #: request_ids of an older release's per-request records, to tombstone
        self.legacy: set[str] = set()

    def _alloc(self, capacity: int) -> None:
        self._keys = array("Q", bytes(8 * capacity))
        self._forget = array("I", bytes(4 * capacity))
        self._codes = array("H", bytes(2 * capacity))
        self._mask = capacity - 1
        self._used = 0  # slots with a key (tombstoned ones too)

    # -- reading and writing -----------------------------------------------------------

    def _slot(self, h: int) -> int:
        """The slot holding ``h``, or the empty slot that ends its probe (key 0)."""
        keys, mask = self._keys, self._mask
        i = h & mask
        while True:
            k = keys[i]
            if k == h or k == 0:
                return i
            i = (i + 1) & mask

    def get(self, h: int) -> Finished | None:
        i = self._slot(h)
        if self._keys[i] == 0:
            return None
        code = self._codes[i]
        if code == _DELETED:
            return None
        fs = self._forget[i]
        if self.wm is not None and fs * 1000 <= self.wm:
            return None
        req, prim, models = self._combos[code]
        return Finished(fs, req, prim, models)

    def put(self, h: int, f: Finished) -> None:
        """Remember ``f`` under ``h``. A key's ``forget_s`` never decreases (the join table
        keeps it, or finishes a join again only later): the segments of an earlier bucket
        are tombstoned first, so a smaller one would be outlived by the old record."""
        combo = (f.req, f.prim, tuple(sorted(f.models)))
        code = self._combo_ix.get(combo)
        if code is None:
            if len(self._combos) >= _DELETED:
                raise OverflowError(f"more than {_DELETED} distinct finished-join shapes")
            combo = (combo[0], combo[1], tuple(sys.intern(m) for m in combo[2]))
            code = self._combo_ix[combo] = len(self._combos)
            self._combos.append(combo)
        i = self._slot(h)
        if self._keys[i] == 0:
            if self._used + 1 > _MAX_FILL * (self._mask + 1):
                self._rebuild()
                i = self._slot(h)
            self._keys[i] = h
            self._used += 1
        self._forget[i] = f.forget_s
        self._codes[i] = code
        self.dirty.add(h)

    def discard(self, h: int) -> None:
        i = self._slot(h)
        if self._keys[i] == h:
            self._codes[i] = _DELETED
            self.dirty.discard(h)

    def __len__(self) -> int:
        """Entries not yet forgotten."""
        return int(np.count_nonzero(self._alive()))

    def snapshot(self) -> dict[int, Finished]:
        """Every entry not yet forgotten (for tests and tools; O(capacity))."""
        keys = np.frombuffer(self._keys, dtype=np.uint64)
        out = {}
        for i in np.flatnonzero(self._alive()):
            f = self.get(int(keys[i]))
            assert f is not None
            out[int(keys[i])] = f
        return out

    def nbytes(self) -> int:
        return len(self._keys) * 14

    # -- forgetting ---------------------------------------------------------------------

    def _alive(self) -> np.ndarray:
        keys = np.frombuffer(self._keys, dtype=np.uint64)
        codes = np.frombuffer(self._codes, dtype=np.uint16)
        alive = (keys != 0) & (codes != _DELETED)
        if self.wm is not None:
            alive &= np.frombuffer(self._forget, dtype=np.uint32).astype(np.int64) * 1000 > self.wm
        return alive

    def forget(self, wm: int) -> None:
        """Entries ``wm`` has passed read as absent from now on."""
        self.wm = wm

    def _rebuild(self) -> None:
        """Drop forgotten entries and tombstones; grow when still more than 55% full.

        Growing at 55% leaves at least 15% of the slots to fill before the next rebuild, so
        rebuilds stay rare in a steady state (every 0.15 x capacity finished joins), and
        600,000 remembered requests fit 2^20 slots (14.7 MB).
        """
        alive = self._alive()
        keys = np.frombuffer(self._keys, dtype=np.uint64)[alive].copy()
        forget = np.frombuffer(self._forget, dtype=np.uint32)[alive].copy()
        codes = np.frombuffer(self._codes, dtype=np.uint16)[alive].copy()
        capacity = self._mask + 1
        while keys.size > 0.55 * capacity:
            capacity *= 2
        self._alloc(capacity)
        self._place(keys, forget, codes)

    def _place(self, keys: np.ndarray, forget: np.ndarray, codes: np.ndarray) -> None:
        """Insert distinct keys, vectorised, as linear probing would have placed them.

        Round d places the keys whose slot home+d is free, the first of each clash winning;
        a key reaches distance d only over slots taken in earlier rounds, so every probe
        from a key's home to its slot crosses no empty slot: lookups find it.
        """
        tab_k = np.frombuffer(self._keys, dtype=np.uint64)
        tab_f = np.frombuffer(self._forget, dtype=np.uint32)
        tab_c = np.frombuffer(self._codes, dtype=np.uint16)
        mask = np.uint64(self._mask)
        home = keys & mask
        todo = np.arange(keys.size)
        d = np.uint64(0)
        while todo.size:
            slots = ((home[todo] + d) & mask).astype(np.int64)
            free = tab_k[slots] == 0
            cand, cslots = todo[free], slots[free]
            uniq, first = np.unique(cslots, return_index=True)
            win = cand[first]
            tab_k[uniq] = keys[win]
            tab_f[uniq] = forget[win]
            tab_c[uniq] = codes[win]
            placed = np.zeros(keys.size, dtype=bool)
            placed[win] = True
            todo = todo[~placed[todo]]
            d += np.uint64(1)
        self._used = int(keys.size)

    # -- changelog ---------------------------------------------------------------------

    def changes(self, prefix: bytes) -> Iterator[tuple[bytes, bytes | None]]:
        """Segment records of what changed, and tombstones of buckets the watermark passed."""
        if self.dirty:
            by_bucket: dict[int, list[int]] = {}
            for h in self.dirty:
                i = self._slot(h)
                if self._keys[i] == h:  # else forgotten and reclaimed before it was written
                    by_bucket.setdefault(self._forget[i] // BUCKET_S, []).append(i)
            for bucket in sorted(by_bucket):
                slots = sorted(by_bucket[bucket])
                for lo in range(0, len(slots), SEGMENT_MAX):
                    self._seq += 1
                    self._segments.setdefault(bucket, []).append(self._seq)
                    key = prefix + _SEG_KEY.pack(bucket, self._seq)
                    yield key, self._encode(slots[lo : lo + SEGMENT_MAX])
            self.dirty.clear()
        if self.wm is not None:
            over = [b for b in self._segments if (b * BUCKET_S + BUCKET_S - 1) * 1000 <= self.wm]
            for bucket in sorted(over):
                for seq in self._segments.pop(bucket):
                    yield prefix + _SEG_KEY.pack(bucket, seq), None
        for rid in sorted(self.legacy):
            yield b"e" + rid.encode(), None
        self.legacy.clear()

    def _encode(self, slots: list[int]) -> bytes:
        ix = np.asarray(slots, dtype=np.int64)
        codes = np.frombuffer(self._codes, dtype=np.uint16)[ix]
        used, local = np.unique(codes, return_inverse=True)
        combos = [[r, p, list(m)] for r, p, m in (self._combos[c] for c in used)]
        head = json.dumps(combos).encode()
        return b"".join(
            (
                _HEAD.pack(ix.size, len(head)),
                head,
                np.frombuffer(self._keys, dtype=np.uint64)[ix].astype("<u8").tobytes(),
                np.frombuffer(self._forget, dtype=np.uint32)[ix].astype("<u4").tobytes(),
                local.astype("<u2").tobytes(),
            )
        )

    def restore_segment(self, key: bytes, value: bytes | None) -> None:
        """Apply one segment record, in log order (a later one overrides an earlier)."""
        bucket, seq = _SEG_KEY.unpack(key)
        self._seq = max(self._seq, seq)
        if value is None:
            seqs = self._segments.get(bucket, [])
            if seq in seqs:
                seqs.remove(seq)
            if not seqs:
                self._segments.pop(bucket, None)
            return
        self._segments.setdefault(bucket, []).append(seq)
        n, hl = _HEAD.unpack_from(value)
        at = _HEAD.size
        combos = json.loads(value[at : at + hl])
        at += hl
        keys = np.frombuffer(value, dtype="<u8", count=n, offset=at)
        forget = np.frombuffer(value, dtype="<u4", count=n, offset=at + 8 * n)
        local = np.frombuffer(value, dtype="<u2", count=n, offset=at + 12 * n)
        for h, fs, c in zip(keys.tolist(), forget.tolist(), local.tolist(), strict=True):
            r, p, m = combos[c]
            self.put(h, Finished(fs, bool(r), bool(p), tuple(m)))

    def finish_restore(self, wm: int | None) -> None:
        self.wm = wm
        # entries moved from an older release's records are written anew as segments
        self.dirty = {digest(rid) for rid in self.legacy}
