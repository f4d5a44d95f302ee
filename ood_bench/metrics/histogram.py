"""Pooled score counts: exact (every distinct score) and binned (bounded memory).

Both reduce validated pixels (1-D float scores + a positive mask) to
:class:`~ood_bench.metrics.curve.ScoreCounts`, the only thing the curve arithmetic needs.

* :func:`exact_counts` -- one-shot exact counts, compressed (only the positives' distinct scores
  and the negative runs between them), from one sort of the scores.
* :class:`ExactCounts` -- mergeable exact state: the counts of every distinct score seen. Its size
  grows with the number of distinct scores (about 24 bytes each), not bounded.
* :class:`BinnedCounts` -- mergeable binned state of bounded size: counts per bin of the
  order-preserving 32-bit key of the float32 score, bins allocated in pages only where scores
  occur and coarsened (low key bits dropped) only when the memory budget requires it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..errors import OodBenchError
from .curve import ScoreCounts, concat_fields

_SIGN = np.uint32(0x80000000)
#: Key of -inf; every lower bin edge is clamped to at least this (keys below it are NaNs).
_KEY_NEG_INF = np.uint32(0x007FFFFF)


def _runs(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a sorted array and how often each occurs (-0.0 equals 0.0)."""
    if sorted_values.size == 0:
        return sorted_values, np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    return sorted_values[starts], np.diff(np.r_[starts, sorted_values.size])


def _empty_counts() -> ScoreCounts:
    return ScoreCounts(np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))


def exact_counts(scores: np.ndarray, positive: np.ndarray) -> ScoreCounts:
    """Exact counts with negative-only runs already merged (see ``curve.compress``).

    Sorts all scores once and the (rare) positives once; the negatives between consecutive
    distinct positive scores are counted by binary search, so distinct negative scores are
    never materialised.
    """
    if scores.size == 0:
        return _empty_counts()
    ordered = np.sort(scores)
    values, pos = _runs(np.sort(scores[positive]))
    low = np.searchsorted(ordered, values, side="left")
    high = np.searchsorted(ordered, values, side="right")
    run_start = np.r_[0, high]
    run_len = np.r_[low, ordered.size] - run_start
    m = values.size
    thresholds = np.empty(2 * m + 1, dtype=np.float64)
    pos_counts = np.zeros(2 * m + 1, dtype=np.int64)
    neg_counts = np.empty(2 * m + 1, dtype=np.int64)
    thresholds[0::2] = ordered[np.minimum(run_start, ordered.size - 1)]
    neg_counts[0::2] = run_len
    thresholds[1::2] = values
    pos_counts[1::2] = pos
    neg_counts[1::2] = high - low - pos
    keep = (pos_counts > 0) | (neg_counts > 0)
    return ScoreCounts(thresholds[keep], pos_counts[keep], neg_counts[keep])


def distinct_counts(scores: np.ndarray, positive: np.ndarray) -> ScoreCounts:
    """Exact counts at every distinct score (mergeable, unlike :func:`exact_counts`)."""
    values, total = _runs(np.sort(scores))
    pos_values, pos_at = _runs(np.sort(scores[positive]))
    pos = np.zeros(values.size, dtype=np.int64)
    pos[np.searchsorted(values, pos_values)] = pos_at
    return ScoreCounts(values.astype(np.float64), pos, total - pos)


def _merge_counts(parts: list[ScoreCounts]) -> ScoreCounts:
    """Sum counts of several ascending parts at equal thresholds (stable sort merges runs)."""
    if not parts:
        return _empty_counts()
    values = np.concatenate([part.thresholds for part in parts])
    order = np.argsort(values, kind="stable")
    values = values[order]
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]]) if values.size else order
    pos = np.concatenate([part.pos for part in parts])[order]
    neg = np.concatenate([part.neg for part in parts])[order]
    if values.size == 0:
        return _empty_counts()
    return ScoreCounts(values[starts], np.add.reduceat(pos, starts), np.add.reduceat(neg, starts))


class ExactCounts:
    """Mergeable exact counts of every distinct score (state grows with distinct scores).

    Updates are reduced to per-chunk distinct counts and merged lazily, once their total size
    reaches the merged size, so the total cost stays ``O(N log N)``.
    """

    def __init__(self) -> None:
        self._merged = _empty_counts()
        self._pending: list[ScoreCounts] = []
        self._pending_size = 0

    def add_scores(self, scores: np.ndarray, positive: np.ndarray) -> None:
        self._add(distinct_counts(scores, positive))

    def add_counts(self, counts: ScoreCounts) -> None:
        self._add(ScoreCounts(counts.thresholds.astype(np.float64), counts.pos, counts.neg))

    def _add(self, counts: ScoreCounts) -> None:
        self._pending.append(counts)
        self._pending_size += counts.thresholds.size
        if self._pending_size >= max(self._merged.thresholds.size, 1 << 20):
            self.counts()

    def counts(self) -> ScoreCounts:
        """The merged counts (thresholds ascending, float64)."""
        if self._pending:
            self._merged = _merge_counts([self._merged, *self._pending])
            self._pending, self._pending_size = [], 0
        return self._merged

    def blocks(self) -> Iterator[ScoreCounts]:
        """The counts as one block (the interface of :meth:`BinnedCounts.blocks`)."""
        yield self.counts()

    @property
    def lossless(self) -> bool:
        return True

    def pixel_totals(self) -> tuple[int, int]:
        """Pixels counted and the positives among them."""
        merged = self.counts()
        positives = int(merged.pos.sum())
        return positives + int(merged.neg.sum()), positives

    @property
    def nbytes(self) -> int:
        merged = self.counts()
        return merged.thresholds.nbytes + merged.pos.nbytes + merged.neg.nbytes


def float32_keys(scores: np.ndarray, out: tuple[np.ndarray, np.ndarray] | None = None
                 ) -> np.ndarray:
    """Order-preserving uint32 keys of float32 scores (-0.0 keyed as 0.0).

    Non-negative floats get the sign bit set; negative floats have all bits flipped, so
    unsigned key order equals float order over the whole range, infinities included.
    ``out``: a float32 and a uint32 buffer of the scores' size (no new arrays).
    """
    normalized, keys = (None, None) if out is None else out
    normalized = np.add(scores, np.float32(0.0), out=normalized)  # turns -0.0 into +0.0
    keys = np.right_shift(normalized.view(np.int32), 31,
                          out=None if keys is None else keys.view(np.int32)).view(np.uint32)
    keys |= _SIGN
    keys ^= normalized.view(np.uint32)
    return keys


def key_floor_values(keys: np.ndarray) -> np.ndarray:
    """The float32 score (as float64) of each key; keys below that of -inf give -inf."""
    low = np.maximum(keys.astype(np.uint32), _KEY_NEG_INF)
    bits = np.where(low & _SIGN, low ^ _SIGN, ~low)
    return bits.view(np.float32).astype(np.float64)


class BinnedCounts:
    """Counts per bin of the float32 key of each score, within ``max_bytes`` of memory.

    The 32-bit key space is cut into ``2**16`` pages of ``2**16`` consecutive keys (1/128 of a
    binade each). A page is allocated only when a score falls in it, with its own resolution:
    bins of ``2**shift`` keys, ``shift`` in 0..16. New pages (those of one update together)
    get full resolution while the budget allows, else a number of bins proportional to their
    share of the pixels (so the resolution follows the data mass, as quantile bins would);
    when the budget is full, every page is re-sized in proportion to its share, never finer
    than before (merged bins cannot be split). At ``shift == 0`` a bin is one float32 value,
    so a state that never coarsened is exact on float16/float32 scores. Memory: a 1 MiB page
    directory plus, per bin, an int32 total and an int32 positive count while fewer than
    ``NARROW_LIMIT`` (2**31) pixels were counted (the per-pixel increments hit a 4-byte array:
    fewer cache and TLB misses), two int64 (16 bytes) after that; the bin budget assumes 16
    bytes, so both fit, and the zeroed buffers are mapped by the OS only where bins are used.
    Storage is in key order except for pages appended after the last re-layout (key-ordered
    runs); ``blocks()`` reads it in key order. Coarsening is the only loss, and the
    ``error_bound`` of ``curve.summarize_blocks`` certifies it.
    """

    PAGE_BITS = 16
    N_PAGES = 1 << 16
    _DIRECTORY_BYTES = N_PAGES * 16
    #: Share of the bin budget a re-layout fills, leaving room for pages that appear later.
    FILL = 0.75
    SLICE = 1 << 16
    #: Pixels of a slice in pages without bins that are set aside rather than given bins now.
    ASIDE = 1 << 10
    #: While fewer pixels were counted, no bin count can overflow int32.
    NARROW_LIMIT = 1 << 31
    #: Most positives' storage indices held back before they are counted (see ``_hold``).
    PENDING = 1 << 18

    def __init__(self, max_bytes: int) -> None:
        self.capacity = (int(max_bytes) - self._DIRECTORY_BYTES) // 16
        if self.capacity < self.N_PAGES:
            minimum = self._DIRECTORY_BYTES + 16 * self.N_PAGES
            raise OodBenchError(f"max_state_bytes={max_bytes} is too small; need >= {minimum}")
        self.rounded = False  # float64 scores were rounded to float32 (bins not exact)
        self._level = 1.0 / (self.FILL * self.capacity)  # pixel share per bin for new pages
        # Pages without bins point to the trash bin (storage index ``capacity``) with shift 16,
        # so the per-pixel path needs no branch: their pixels are set aside (see add_scores).
        self._offset = np.full(self.N_PAGES, self.capacity, dtype=np.intp)
        # uint32 like the keys' low halves, so the per-pixel shift is one contiguous uint32 op
        self._shift = np.full(self.N_PAGES, self.PAGE_BITS, dtype=np.uint32)
        self._used = 0
        self._seen_total = self._seen_pos = 0  # pixels counted so far (shares of new pages)
        self._buffers: tuple[np.ndarray, ...] | None = None  # see _scratch
        self._pending: list[np.ndarray] = []  # see _hold
        self._pending_size = 0
        self._allocate_storage(np.int32)

    def _allocate_storage(self, dtype: type) -> None:
        # Zeroed memory is mapped lazily: only the bins in use ever occupy RAM.
        self._bins = np.zeros(self.capacity + 1, dtype=dtype)  # total pixels per bin, + trash
        self._pos = np.zeros(self.capacity + 1, dtype=dtype)  # positives per bin, + trash

    def _reserve(self) -> None:
        """Widen the counts to int64 before the pixel count reaches ``NARROW_LIMIT`` (called
        after ``_seen_total`` was raised by the pixels about to be counted)."""
        if self._bins.dtype != np.int64 and self._seen_total >= self.NARROW_LIMIT:
            self._bins, self._pos = self._bins.astype(np.int64), self._pos.astype(np.int64)

    def _hold(self, index: np.ndarray) -> None:
        """Count one positive at each storage ``index`` later, with many others.

        The positives' increments, done right after the per-pixel ones of the totals, each miss
        the caches and TLB those evicted; done apart, a batch at a time, they cost about half
        (33 instead of about 60 ms for the 1e6 positives of 5e7 pixels). Held indices stay
        valid until a re-layout, which flushes them first, as does every reader of the
        positive counts. At most ``PENDING`` are held (and only while the counts are int32:
        the budget's room for int64 counts holds them).
        """
        self._pending.append(index)
        self._pending_size += index.size
        if self._pending_size >= (min(self.PENDING, self.capacity // 2)
                                  if self._pos.dtype == np.int32 else 0):
            self._flush()

    def _flush(self) -> None:
        """Count the held positives (those of pages without bins went to the trash bin)."""
        one = self._pos.dtype.type(1)
        for index in self._pending:
            np.add.at(self._pos, index, one)
        self._pos[-1] = 0
        self._pending, self._pending_size = [], 0

    def _read(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Totals and positives (int64) of the bins at storage ``index``."""
        return self._bins[index].astype(np.int64), self._pos[index].astype(np.int64)

    def _allocated(self) -> np.ndarray:
        """Which pages have bins (bool per page)."""
        return self._offset < self.capacity

    @property
    def lossless(self) -> bool:
        return not self.rounded and not self._shift[self._allocated()].any()

    def pixel_totals(self) -> tuple[int, int]:
        """Pixels counted and the positives among them (kept as they are counted)."""
        return self._seen_total, self._seen_pos

    @property
    def nbytes(self) -> int:
        held = self._pending_size * np.dtype(np.intp).itemsize
        return self._DIRECTORY_BYTES + 2 * self._bins.itemsize * self._used + held

    def add_scores(self, scores: np.ndarray, positive: np.ndarray) -> None:
        """Count validated scores (float16/32/64); float64 is rounded to float32 first.

        Works in slices of ``SLICE`` pixels so the temporaries stay in the CPU cache. The
        first slice may give bins to many new pages at once (a first update); in later slices
        the pixels of pages without bins go to the trash bin and are set aside, and their
        pages get bins once, after the last slice (few calls of ``_make_room``).
        """
        starts = range(0, scores.size, self.SLICE)
        aside: list[tuple[np.ndarray, np.ndarray]] = []
        self._count_slices(scores, positive, starts[:1], aside, allocate=True)
        rest = starts[1:]
        if rest:
            self._seen_total += scores.size - rest[0]
            self._seen_pos += int(np.count_nonzero(positive[rest[0]:]))
            self._reserve()
            self._count_slices(scores, positive, rest, aside, allocate=False)
        if aside:
            pages, low = self._split(np.concatenate([part for part, _ in aside]))
            hit = np.concatenate([part for _, part in aside])
            self._make_room(pages, 1, hit, None)  # none of these pages has bins
            self._count(pages, low, np.take(self._offset, pages), hit)

    def _count_slices(self, scores: np.ndarray, positive: np.ndarray, starts: range,
                      aside: list, *, allocate: bool) -> None:
        """Count the slices starting at ``starts``. Pixels of pages without bins are appended
        to ``aside``, unless ``allocate`` and there are many of them: then their pages get
        bins at once (only the first slice of an update may allocate, and only then are its
        pixels added to ``_seen_*`` here)."""
        for start in starts:
            part = scores[start:start + self.SLICE]
            hit = positive[start:start + self.SLICE]
            if allocate:
                self._seen_total += part.size
                self._seen_pos += int(np.count_nonzero(hit))
                self._reserve()
            if part.dtype != np.float32:
                rounded = part.astype(np.float32)
                self.rounded = self.rounded or bool(np.any(rounded != part))
                part = rounded
            scratch = self._scratch(part.size)
            keys = float32_keys(part, scratch[:2])
            pages, low = self._split(keys, out=(scratch[2], scratch[4]))
            offsets = np.take(self._offset, pages, out=scratch[3], mode="clip")  # pages < 2**16
            index = self._count(pages, low, offsets, hit, shifts=scratch[5])
            if self._bins[-1]:  # pixels of pages without bins went to the trash bin
                self._bins[-1] = 0
                missing = np.flatnonzero(index == self.capacity)  # usually a few pixels
                if not allocate or missing.size <= self.ASIDE:
                    aside.append((keys[missing], hit[missing]))
                else:  # many new pages (a first update): make room now, then count them
                    pages, low, hit = pages[missing], low[missing], hit[missing]
                    self._make_room(pages, 1, hit, None)
                    self._count(pages, low, np.take(self._offset, pages), hit)

    def _scratch(self, size: int) -> tuple[np.ndarray, ...]:
        """Buffers for the temporaries of a slice of ``size`` pixels (reused by every slice:
        no fresh memory per slice): float32 and uint32 keys, intp pages and storage indices,
        uint32 keys within the page and shifted keys within the page."""
        if self._buffers is None or self._buffers[0].size < size:
            room = max(size, self.SLICE)
            self._buffers = (np.empty(room, np.float32), np.empty(room, np.uint32),
                             np.empty(room, np.intp), np.empty(room, np.intp),
                             np.empty(room, np.uint32), np.empty(room, np.uint32))
        return tuple(buffer[:size] for buffer in self._buffers)

    def _count(self, pages: np.ndarray, low: np.ndarray, offsets: np.ndarray,
               hit: np.ndarray, shifts: np.ndarray | None = None) -> np.ndarray:
        """Add one to the bin of every key (given split); return the storage indices
        (``offsets``, reused; the trash bin for pages without bins). ``shifts``: an optional
        uint32 buffer of the keys' size."""
        index = self._storage_index(pages, low, offsets, shifts)
        one = self._bins.dtype.type(1)  # a scalar of the storage dtype: np.add.at's fast path
        np.add.at(self._bins, index, one)
        self._hold(np.compress(hit, index))  # faster than a mask for few hits
        return index

    def _split(self, keys: np.ndarray, out: tuple[np.ndarray, np.ndarray] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Page (high 16 bits, intp) and key within the page (low 16 bits, uint32) of uint32
        keys; into the intp and uint32 buffers ``out`` if given. Contiguous arithmetic: faster
        than strided uint16 views of the halves."""
        pages, low = (np.empty(keys.size, np.intp), None) if out is None else out
        np.right_shift(keys, self.PAGE_BITS, out=pages, casting="unsafe")  # < 2**16: fits
        return pages, np.bitwise_and(keys, np.uint32(self.N_PAGES - 1), out=low)

    def add_bins(self, keys: np.ndarray, shifts: np.ndarray, total: np.ndarray,
                 pos: np.ndarray) -> None:
        """Add counts of bins starting at ``keys`` and ``2**shifts`` keys wide (another state's)."""
        keys = keys.astype(np.intp)
        pages = keys >> self.PAGE_BITS
        required = np.zeros(self.N_PAGES, dtype=np.intp)  # the coarsest shift each page needs
        np.maximum.at(required, pages, shifts.astype(np.intp))
        self._seen_total += int(total.sum())
        self._seen_pos += int(pos.sum())
        self._reserve()
        offsets = np.take(self._offset, pages)
        if offsets.size and (offsets.max() == self.capacity
                             or (required > self._shift)[self._allocated()].any()):
            missing = offsets == self.capacity
            self._make_room(pages[missing], total[missing], pos[missing], required)
            offsets = np.take(self._offset, pages)
        index = self._storage_index(pages, keys & (self.N_PAGES - 1), offsets)
        np.add.at(self._bins, index, total.astype(self._bins.dtype))
        np.add.at(self._pos, index, pos.astype(self._pos.dtype))

    def _storage_index(self, pages: np.ndarray, low: np.ndarray, offsets: np.ndarray,
                       shifts: np.ndarray | None = None):
        """Storage index of each key: its page's offset + (its key within the page ``low`` >>
        the page's shift); reuses ``offsets`` (``take(self._offset, pages)``) and the uint32
        buffer ``shifts`` if given."""
        if shifts is None:  # any integer ``low`` (uint32 in the per-pixel path)
            offsets += np.right_shift(low, np.take(self._shift, pages))
        else:
            np.take(self._shift, pages, out=shifts, mode="clip")  # pages < 2**16
            offsets += np.right_shift(low, shifts, out=shifts)
        return offsets

    def _make_room(self, pages, total, pos, required) -> None:
        """Allocate ``pages`` (pages of the new pixels or bins, with weights ``total`` and
        positives ``pos``: arrays like ``pages`` or scalars), re-laying out every page when the
        budget or a coarser ``required`` resolution demands it. A new page's share is taken of
        all pixels so far.
        """
        new_pages, new_total, new_pos = self._page_sums(pages, total, pos)
        share = self._share(new_total, new_pos, self._seen_total, self._seen_pos)
        if required is None:  # only new pages: full resolution while it fits, else by share
            shifts = np.zeros(new_pages.size, dtype=np.intp)
            coarsen = False
        else:
            allocated = self._allocated()
            floor = np.maximum(np.where(allocated, self._shift, 0), required)
            shifts = floor[new_pages]
            coarsen = (floor > self._shift)[allocated].any()
        if self._used + (1 << (self.PAGE_BITS - shifts)).sum() > self.capacity:
            shifts = np.maximum(self._shift_for(share, self._level), shifts)
        sizes = 1 << (self.PAGE_BITS - shifts)
        if not coarsen and self._used + sizes.sum() <= self.capacity:
            self._offset[new_pages] = self._used + np.r_[0, np.cumsum(sizes)[:-1]]
            self._shift[new_pages] = shifts
            self._used += int(sizes.sum())
            return
        if required is None:
            floor = np.where(self._allocated(), self._shift, 0)  # bins are never split
        self._relayout(new_pages, new_total, new_pos, floor)

    def _page_sums(self, pages: np.ndarray, *weights) -> tuple[np.ndarray, ...]:
        """The distinct ``pages`` (ascending) and, per weight, its float sum over each.

        Many entries (a first update, another state's bins) are summed over the whole page
        directory, which needs no sort; a few (pixels of new pages in a later update) are
        sorted, as directory-sized sums would cost far more than they do.
        """
        if pages.size > self.N_PAGES >> 4:
            distinct = np.flatnonzero(np.bincount(pages, minlength=self.N_PAGES))
            return distinct, *(np.bincount(pages, np.broadcast_to(weight, pages.shape),
                                           self.N_PAGES)[distinct] for weight in weights)
        distinct, inverse = np.unique(pages, return_inverse=True)
        return distinct, *(np.bincount(inverse, np.broadcast_to(weight, pages.shape),
                                       distinct.size) for weight in weights)

    @staticmethod
    def _share(total, pos, all_total, all_pos) -> np.ndarray:
        """Weight of pages for resolution: mean of their shares of negatives and positives.

        Weighting the rare positives like the negatives puts resolution where the ranking of
        the OOD pixels is decided, which is what AP and the FPR@95 crossing depend on.
        """
        all_neg = all_total - all_pos
        return 0.5 * ((total - pos) / max(all_neg, 1) + pos / max(all_pos, 1))

    @classmethod
    def _shift_for(cls, share: np.ndarray, level: float) -> np.ndarray:
        """Page shift giving about ``share / level`` bins (a power of two, 1..2**16)."""
        with np.errstate(divide="ignore", over="ignore"):
            bits = np.floor(np.log2(np.maximum(share, 1e-300) / level))
        return cls.PAGE_BITS - np.clip(bits, 0, cls.PAGE_BITS).astype(np.intp)

    def _relayout(self, new_pages, new_total, new_pos, floor) -> None:
        """Re-size every page to its share of all pixels, within ``FILL`` of the budget.

        The new storage is in key order; the stored bins are carried over page by page (see
        ``_carry_over``), never re-added one by one.
        """
        self._flush()
        old_pages, old_offsets, old_shifts, _ = self._pages_by_storage()
        old_bins, old_pos = self._bins, self._pos
        self._bins = self._pos = None
        page_total = np.zeros(self.N_PAGES)
        page_pos = np.zeros(self.N_PAGES)
        if old_pages.size:
            stored = old_bins[:self._used], old_pos[:self._used]
            page_total[old_pages] = np.add.reduceat(stored[0], old_offsets, dtype=np.int64)
            page_pos[old_pages] = np.add.reduceat(stored[1], old_offsets, dtype=np.int64)
        stored_total = int(page_total.sum())
        page_total[new_pages] += new_total
        page_pos[new_pages] += new_pos
        pages = np.flatnonzero(page_total > 0)
        share = self._share(page_total[pages], page_pos[pages], page_total.sum(), page_pos.sum())
        floor = floor[pages]
        target = self.FILL * self.capacity
        low, high = -1100.0, 1.0  # log2 of the level; high always fits (one bin per page)
        for _ in range(60):
            middle = 0.5 * (low + high)
            shifts = np.maximum(self._shift_for(share, 2.0**middle), floor)
            size = (1 << (self.PAGE_BITS - shifts)).sum()
            low, high = (low, middle) if size <= target else (middle, high)
        self._level = 2.0**high
        page_shifts = np.maximum(self._shift_for(share, self._level), floor)
        sizes = 1 << (self.PAGE_BITS - page_shifts)
        self._offset[:] = self.capacity
        self._offset[pages] = np.r_[0, np.cumsum(sizes)[:-1]]
        self._shift[:] = self.PAGE_BITS
        self._shift[pages] = page_shifts
        self._used = int(sizes.sum())
        # The width rule counts the stored pixels twice here (a margin below NARROW_LIMIT).
        wide = self._seen_total + stored_total >= self.NARROW_LIMIT
        self._allocate_storage(np.int64 if wide else old_bins.dtype.type)
        self._carry_over(old_pages, old_offsets, old_shifts, old_bins, old_pos)

    def _carry_over(self, pages, offsets, shifts, bins, pos) -> None:
        """Move the bins of ``pages`` (their old ``offsets`` and ``shifts`` into the old storage
        ``bins``, ``pos``) to the current layout; pages without bins now are dropped."""
        targets = self._offset[pages]
        keep = targets < self.capacity
        self._move_pages(offsets[keep], targets[keep], shifts[keep], pages[keep], bins, pos,
                         add=False)

    def merge(self, other: BinnedCounts) -> None:
        """Add ``other``'s counts page by page: the same result as ``add_bins(*other.bins())``
        (its per-page sums and resolutions decide the layout the same way) without listing
        its bins one by one."""
        self.rounded = self.rounded or other.rounded
        other._flush()
        pages, offsets, shifts, _ = other._pages_by_storage()
        if not pages.size:
            return
        # pages are contiguous blocks of the storage, in storage order: one sum per page
        total = np.add.reduceat(other._bins[:other._used], offsets, dtype=np.int64)
        pos = np.add.reduceat(other._pos[:other._used], offsets, dtype=np.int64)
        keep = total > 0
        pages, offsets, shifts, total, pos = (a[keep] for a in (pages, offsets, shifts, total,
                                                                pos))
        if not pages.size:
            return
        required = np.zeros(self.N_PAGES, dtype=np.intp)
        required[pages] = shifts
        self._seen_total += int(total.sum())
        self._seen_pos += int(pos.sum())
        self._reserve()
        targets = self._offset[pages]
        if targets.max() == self.capacity or (required > self._shift)[self._allocated()].any():
            missing = targets == self.capacity
            self._make_room(pages[missing], total[missing], pos[missing], required)
            targets = self._offset[pages]
        self._move_pages(offsets, targets, shifts, pages, other._bins, other._pos, add=True)

    def _move_pages(self, offsets, targets, shifts, pages, bins, pos, *, add: bool) -> None:
        """Copy (or ``add``) the bins of ``pages`` from the storage ``bins``, ``pos`` (at
        ``offsets``, resolution ``shifts``) to this storage at ``targets``.

        A page whose resolution stays is one slice (a stretch of such pages adjacent in both
        storages as one slice); a page that is ``d`` shifts coarser here has each ``2**d``
        adjacent bins summed into one (bins are aligned: both shifts count from the page start).
        """
        coarser = self._shift[pages].astype(np.intp) - shifts
        sizes = 1 << (self.PAGE_BITS - shifts)
        same = coarser == 0
        source, target, size = offsets[same], targets[same], sizes[same]
        if source.size:
            end = source + size
            first = np.flatnonzero(np.r_[True, (source[1:] != end[:-1])
                                         | (target[1:] != target[:-1] + size[:-1])])
            last = np.r_[first[1:], source.size] - 1
            for old, new, length in zip(source[first].tolist(), target[first].tolist(),
                                        (end[last] - source[first]).tolist(), strict=True):
                for mine, theirs in ((self._bins, bins), (self._pos, pos)):
                    if add:
                        mine[new:new + length] += theirs[old:old + length]
                    else:
                        mine[new:new + length] = theirs[old:old + length]
        for shift, step in set(zip(shifts[~same].tolist(), coarser[~same].tolist(), strict=True)):
            group = (shifts == shift) & (coarser == step)
            width = 1 << (self.PAGE_BITS - shift)
            source = (offsets[group][:, None] + np.arange(width)).ravel()
            target = (targets[group][:, None] + np.arange(width >> step)).ravel()
            for mine, theirs in ((self._bins, bins), (self._pos, pos)):
                summed = theirs[source].reshape(-1, 1 << step).sum(axis=1)
                mine[target] = mine[target] + summed if add else summed

    def _pages_by_storage(self) -> tuple[np.ndarray, ...]:
        """Allocated pages in storage order: page, offset, shift (intp) and rank (uint16: the
        page's position in key order).

        Storage is in key order except for pages appended after the last re-layout, so it is a
        permutation of key-ordered runs (a single run when nothing was appended).
        """
        pages = np.flatnonzero(self._allocated())  # key order
        rank = np.argsort(self._offset[pages])
        pages = pages[rank]
        return pages, self._offset[pages], self._shift[pages].astype(np.intp), \
            rank.astype(np.uint16)

    def _stored_keys(self, index: np.ndarray, layout: tuple[np.ndarray, ...], *,
                     with_shifts: bool = True):
        """Lowest key (uint32) and shift (uint8; None unless ``with_shifts``) of the bins at
        storage ``index`` (ascending); per-page values are repeated over each page's bins."""
        pages, offsets, shifts, _ = layout
        per_page = np.diff(np.searchsorted(index, offsets), append=index.size)  # offsets[0] = 0
        keys = index - np.repeat(offsets, per_page)
        keys <<= np.repeat(shifts, per_page)
        keys |= np.repeat(pages << self.PAGE_BITS, per_page)
        bin_shifts = np.repeat(shifts.astype(np.uint8), per_page) if with_shifts else None
        return keys.astype(np.uint32), bin_shifts

    def _nonempty(self) -> np.ndarray:
        """Storage indices of the non-empty bins, ascending."""
        return np.flatnonzero(self._bins[:self._used] != 0)  # bool: branch-free nonzero

    def bins(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Non-empty bins in key order: lowest key (uint32), shift (uint8), totals, positives."""
        self._flush()
        index = self._nonempty()
        layout = self._pages_by_storage()
        keys, shifts = self._stored_keys(index, layout)
        total, pos = self._read(index)
        run_start = self._key_runs(layout[3])
        if run_start.sum() > 1:  # put the runs of pages in key order (no sort of the bins)
            order = self._runs_in_key_order(np.searchsorted(index, layout[1][run_start]),
                                            layout[3][run_start], index.size)
            keys, shifts, total, pos = keys[order], shifts[order], total[order], pos[order]
        return keys, shifts, total, pos

    @staticmethod
    def _key_runs(rank: np.ndarray) -> np.ndarray:
        """Which pages (in storage order, with key-order ``rank``) start a key-ordered run."""
        return np.diff(rank.astype(np.intp), prepend=-2) != 1

    def counts(self) -> ScoreCounts:
        """Counts of every bin holding positives and of the negative-only stretches between
        them (summed, as ``curve.compress`` does), thresholds ascending: :meth:`blocks` joined."""
        parts = list(self.blocks())[::-1]
        if not parts:
            return _empty_counts()
        return ScoreCounts(*concat_fields([(part.thresholds, part.pos, part.neg)
                                           for part in parts]))

    def blocks(self) -> Iterator[ScoreCounts]:
        """The counts of :meth:`counts` about ``BLOCK`` bins at a time, from the highest keys
        to the lowest (each block ascending inside): what ``curve.summarize_blocks`` reads, with
        no temporary of the state's size. A threshold is the lowest score of the lowest
        non-empty bin it stands for; a negative-only stretch cut by a block edge comes as two
        pieces (``summarize_blocks`` merges them).

        A block is a key-ordered group of whole pages; pages appended after the last re-layout
        (see ``_pages_by_storage``) may lie apart in storage: their bins are then copied
        together.
        """
        if self._used == 0:
            return
        self._flush()
        pages = np.flatnonzero(self._allocated())  # key order
        offsets, shifts = self._offset[pages], self._shift[pages].astype(np.intp)
        sizes = 1 << (self.PAGE_BITS - shifts)
        start = np.cumsum(sizes) - sizes  # where each page starts in key order
        group = start // self.BLOCK
        firsts = np.flatnonzero(np.diff(group, prepend=-1))
        lasts = np.append(firsts[1:], pages.size)
        for first, last in zip(firsts[::-1].tolist(), lasts[::-1].tolist(), strict=True):
            part = slice(first, last)
            total, pos = self._gather(offsets[part], sizes[part])
            layout = (pages[part], start[part] - start[first], shifts[part], None)
            block = self._block_counts(total, pos, layout)
            if block.thresholds.size:
                yield block

    def _gather(self, offsets: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Totals and positives of the stored pages at ``offsets`` (``sizes`` bins each), one
        after the other (views when they are adjacent in storage)."""
        ends = offsets + sizes
        breaks = np.flatnonzero(offsets[1:] != ends[:-1]) + 1
        spans = list(zip(offsets[np.append(0, breaks)].tolist(),
                         ends[np.append(breaks, offsets.size) - 1].tolist(), strict=True))
        if len(spans) == 1:
            return self._bins[spans[0][0]:spans[0][1]], self._pos[spans[0][0]:spans[0][1]]
        return tuple(np.concatenate([stored[low:high] for low, high in spans])
                     for stored in (self._bins, self._pos))

    def _block_counts(self, total: np.ndarray, pos: np.ndarray,
                      layout: tuple[np.ndarray, ...]) -> ScoreCounts:
        """Pieces of one block of bins (``layout``: its pages, where each starts in it, their
        shifts): each bin with positives, and the negative-only stretches before, between and
        after them, summed from running totals (in the storage dtype: int32 cannot overflow
        below ``NARROW_LIMIT`` pixels)."""
        running = np.cumsum(total, dtype=total.dtype)
        hits = np.flatnonzero(pos != 0)  # a bool array: much faster to scan than int counts
        hit_total = total[hits]
        stretch_start = np.empty(hits.size + 1, dtype=np.int64)  # pixels of the block before it
        stretch_start[0] = 0
        stretch_start[1:] = running[hits]
        stretch_end = np.empty_like(stretch_start)
        stretch_end[:-1] = stretch_start[1:] - hit_total
        stretch_end[-1] = running[-1]
        index = np.empty(2 * hits.size + 1, dtype=np.intp)  # stretch, hit, stretch, ..., stretch
        first = np.empty(hits.size + 1, dtype=np.intp)  # each stretch's first bin, or ``size``
        first[0] = 0
        first[1:] = hits + 1
        empty = np.flatnonzero(total[np.minimum(first, total.size - 1)] == 0)
        first[empty] = np.searchsorted(running, stretch_start[empty], side="right")
        index[0::2] = first  # first non-empty bin (only the searched ones were empty)
        index[1::2] = hits
        piece_total = np.empty(index.size, dtype=np.int64)
        piece_total[0::2] = stretch_end - stretch_start
        piece_total[1::2] = hit_total
        piece_pos = np.zeros(index.size, dtype=np.int64)
        piece_pos[1::2] = pos[hits]
        keep = np.flatnonzero(piece_total)
        keys = self._stored_keys(index[keep], layout, with_shifts=False)[0]
        piece_pos = piece_pos[keep]
        return ScoreCounts(key_floor_values(keys), piece_pos, piece_total[keep] - piece_pos)

    @staticmethod
    def _runs_in_key_order(run_start: np.ndarray, run_rank: np.ndarray, size: int):
        """Permutation of ``size`` items, cut into runs at ``run_start`` (ascending), that
        orders the runs by ``run_rank`` and keeps each run's own order."""
        length = np.diff(run_start, append=size)
        by_rank = np.argsort(run_rank)
        length, run_start = length[by_rank], run_start[by_rank]
        new_start = np.cumsum(length) - length
        return np.repeat(run_start - new_start, length) + np.arange(size)

    #: Stored bins per block of :meth:`blocks` (its temporaries stay in the CPU cache).
    BLOCK = 1 << 16
