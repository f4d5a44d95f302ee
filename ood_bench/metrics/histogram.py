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

import numpy as np

from ..errors import OodBenchError
from .curve import ScoreCounts

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

    @property
    def lossless(self) -> bool:
        return True

    @property
    def nbytes(self) -> int:
        merged = self.counts()
        return merged.thresholds.nbytes + merged.pos.nbytes + merged.neg.nbytes


def float32_keys(scores: np.ndarray) -> np.ndarray:
    """Order-preserving uint32 keys of float32 scores (-0.0 keyed as 0.0).

    Non-negative floats get the sign bit set; negative floats have all bits flipped, so
    unsigned key order equals float order over the whole range, infinities included.
    """
    normalized = scores + np.float32(0.0)  # turns -0.0 into +0.0
    keys = (normalized.view(np.int32) >> 31).view(np.uint32)
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
    bins of ``2**shift`` keys, ``shift`` in 0..16. New pages get full resolution while the
    budget allows, else a number of bins proportional to their share of the pixels (so the
    resolution follows the data mass, as quantile bins would); when the budget is full, every
    page is re-sized in proportion to its share, never finer than before (merged bins cannot be
    split). At ``shift == 0`` a bin is one float32 value, so a state that never coarsened is
    exact on float16/float32 scores. Memory: a 1 MiB page directory plus, per bin, an int32
    total and an int32 positive count while fewer than ``NARROW_LIMIT`` (2**31) pixels were
    counted (the per-pixel increments hit a 4-byte array: fewer cache and TLB misses), two
    int64 (16 bytes) after that; the bin budget assumes 16 bytes, so both fit, and the
    zeroed buffers are mapped by the OS only where bins are used. Storage is in key order
    except for pages appended after the last re-layout (key-ordered runs); ``counts()`` works
    on it as laid out. Coarsening is the only loss, and ``curve.error_bounds`` certifies it.
    """

    PAGE_BITS = 16
    N_PAGES = 1 << 16
    _DIRECTORY_BYTES = N_PAGES * 16
    #: Share of the bin budget a re-layout fills, leaving room for pages that appear later.
    FILL = 0.75
    SLICE = 1 << 16
    #: While fewer pixels were counted, no bin count can overflow int32.
    NARROW_LIMIT = 1 << 31

    def __init__(self, max_bytes: int) -> None:
        self.capacity = (int(max_bytes) - self._DIRECTORY_BYTES) // 16
        if self.capacity < self.N_PAGES:
            minimum = self._DIRECTORY_BYTES + 16 * self.N_PAGES
            raise OodBenchError(f"max_state_bytes={max_bytes} is too small; need >= {minimum}")
        self.rounded = False  # float64 scores were rounded to float32 (bins not exact)
        self._level = 1.0 / (self.FILL * self.capacity)  # pixel share per bin for new pages
        self._offset = np.full(self.N_PAGES, -1, dtype=np.intp)
        self._shift = np.zeros(self.N_PAGES, dtype=np.uint32)  # shifts uint32 keys in place
        self._used = 0
        self._seen_total = self._seen_pos = 0  # pixels counted so far (shares of new pages)
        self._allocate_storage(np.int32)

    def _allocate_storage(self, dtype: type) -> None:
        # Zeroed memory is mapped lazily: only the bins in use ever occupy RAM.
        self._bins = np.zeros(self.capacity, dtype=dtype)  # total pixels per bin
        self._pos = np.zeros(self.capacity, dtype=dtype)  # positives per bin
        self._one = dtype(1)  # a scalar of the storage dtype keeps np.add.at on its fast path

    def _reserve(self) -> None:
        """Widen the counts to int64 before the pixel count reaches ``NARROW_LIMIT`` (called
        after ``_seen_total`` was raised by the pixels about to be counted)."""
        if self._bins.dtype != np.int64 and self._seen_total >= self.NARROW_LIMIT:
            self._bins, self._pos = self._bins.astype(np.int64), self._pos.astype(np.int64)
            self._one = np.int64(1)

    def _read(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Totals and positives (int64) of the bins at storage ``index``."""
        return self._bins[index].astype(np.int64), self._pos[index].astype(np.int64)

    @property
    def lossless(self) -> bool:
        return not self.rounded and not self._shift[self._offset >= 0].any()

    @property
    def nbytes(self) -> int:
        return self._DIRECTORY_BYTES + 2 * self._bins.itemsize * self._used

    def add_scores(self, scores: np.ndarray, positive: np.ndarray) -> None:
        """Count validated scores (float16/32/64); float64 is rounded to float32 first.

        Works in slices of ``SLICE`` pixels so the temporaries stay in the CPU cache.
        """
        for start in range(0, scores.size, self.SLICE):
            part = scores[start:start + self.SLICE]
            if part.dtype != np.float32:
                rounded = part.astype(np.float32)
                self.rounded = self.rounded or bool(np.any(rounded != part))
                part = rounded
            hit = positive[start:start + self.SLICE]
            self._seen_total += part.size
            self._seen_pos += int(np.count_nonzero(hit))
            self._reserve()
            keys = float32_keys(part)
            pages = keys >> self.PAGE_BITS
            offsets = np.take(self._offset, pages)
            if offsets.min() < 0:
                missing = offsets < 0
                self._make_room(pages[missing], 1, pages[missing & hit], 1, None)
                offsets = np.take(self._offset, pages)  # a re-layout moves every page
            index = self._storage_index(keys, pages, offsets)
            np.add.at(self._bins, index, self._one)
            np.add.at(self._pos, index[hit], self._one)

    def add_bins(self, keys: np.ndarray, shifts: np.ndarray, total: np.ndarray,
                 pos: np.ndarray) -> None:
        """Add counts of bins starting at ``keys`` and ``2**shifts`` keys wide (another state's)."""
        keys = keys.astype(np.intp)
        required = np.zeros(self.N_PAGES, dtype=np.intp)
        np.maximum.at(required, keys >> self.PAGE_BITS, shifts.astype(np.intp))
        self._add(keys, total, pos, required)

    def _add(self, keys, total, pos, required=None) -> None:
        """Count bins starting at ``keys`` (intp, owned: reused as storage indices) with
        weights ``total`` and ``pos``; ``required``: the coarsest shift each page needs."""
        self._seen_total += int(total.sum())
        self._seen_pos += int(pos.sum())
        self._reserve()
        pages = keys >> self.PAGE_BITS
        offsets = np.take(self._offset, pages)
        if offsets.size and (offsets.min() < 0 or (
                required is not None and (required > self._shift)[self._offset >= 0].any())):
            missing = offsets < 0
            self._make_room(pages[missing], total[missing], pages[missing], pos[missing],
                            required)
            offsets = np.take(self._offset, pages)
        index = self._storage_index(keys, pages, offsets)
        np.add.at(self._bins, index, total.astype(self._bins.dtype))
        np.add.at(self._pos, index, pos.astype(self._pos.dtype))

    def _storage_index(self, keys: np.ndarray, pages: np.ndarray, offsets: np.ndarray):
        """Storage index of each key: page offset + (key within its page >> page shift).

        Reuses the ``keys`` and ``offsets`` buffers (uint32 or intp keys, intp offsets).
        """
        keys &= self.N_PAGES - 1
        keys >>= np.take(self._shift, pages)
        offsets += keys
        return offsets

    def _make_room(self, pages, total, pos_pages, pos, required) -> None:
        """Allocate ``pages`` (pages of the new pixels or bins with weights ``total``, and of
        the positives with ``pos``), re-laying out every page when the budget or a coarser
        ``required`` resolution demands it. A new page's share is taken of all pixels so far.
        """
        new_pages = np.sort(pages)
        first = np.ones(new_pages.size, dtype=bool)  # empty when only re-binning is required
        first[1:] = new_pages[1:] != new_pages[:-1]
        new_pages = new_pages[first]
        new_total = np.bincount(np.searchsorted(new_pages, pages),
                                np.broadcast_to(total, pages.shape), new_pages.size)
        new_pos = np.bincount(np.searchsorted(new_pages, pos_pages),
                              np.broadcast_to(pos, pos_pages.shape), new_pages.size)
        share = self._share(new_total, new_pos, self._seen_total, self._seen_pos)
        if required is None:  # only new pages: full resolution while it fits, else by share
            shifts = np.zeros(new_pages.size, dtype=np.intp)
            coarsen = False
        else:
            floor = np.maximum(np.where(self._offset >= 0, self._shift, 0), required)
            shifts = floor[new_pages]
            coarsen = (floor > self._shift)[self._offset >= 0].any()
        if self._used + (1 << (self.PAGE_BITS - shifts)).sum() > self.capacity:
            shifts = np.maximum(self._shift_for(share, self._level), shifts)
        sizes = 1 << (self.PAGE_BITS - shifts)
        if not coarsen and self._used + sizes.sum() <= self.capacity:
            self._offset[new_pages] = self._used + np.r_[0, np.cumsum(sizes)[:-1]]
            self._shift[new_pages] = shifts
            self._used += int(sizes.sum())
            return
        if required is None:
            floor = np.where(self._offset >= 0, self._shift, 0)  # bins are never split
        self._relayout(new_pages, new_total, new_pos, floor)

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
        """Re-size every page to its share of all pixels, within ``FILL`` of the budget."""
        keys, _, _, total, pos = self._stored_bins()
        dtype = self._bins.dtype.type
        self._bins = self._pos = None  # free the old storage before allocating the new one
        keys = keys.astype(np.intp)
        page_total = np.bincount(keys >> self.PAGE_BITS, total, minlength=self.N_PAGES)
        page_pos = np.bincount(keys >> self.PAGE_BITS, pos, minlength=self.N_PAGES)
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
        self._offset[:] = -1
        self._offset[pages] = np.r_[0, np.cumsum(sizes)[:-1]]
        self._shift[:] = 0
        self._shift[pages] = page_shifts
        self._used = int(sizes.sum())
        self._allocate_storage(dtype)
        seen = self._seen_total, self._seen_pos
        self._add(keys, total, pos)  # the same pixels again, in the new layout
        self._seen_total, self._seen_pos = seen

    def _pages_by_storage(self) -> tuple[np.ndarray, ...]:
        """Allocated pages in storage order: page, offset, shift (intp) and rank (uint16: the
        page's position in key order).

        Storage is in key order except for pages appended after the last re-layout, so it is a
        permutation of key-ordered runs (a single run when nothing was appended).
        """
        pages = np.flatnonzero(self._offset >= 0)  # key order
        rank = np.argsort(self._offset[pages])
        pages = pages[rank]
        return pages, self._offset[pages], self._shift[pages].astype(np.intp), \
            rank.astype(np.uint16)

    def _stored_keys(self, index: np.ndarray, layout: tuple[np.ndarray, ...]):
        """Lowest key (uint32), shift (uint8) and page rank of the bins at storage ``index``
        (ascending); per-page values are repeated over each page's bins (few temporaries)."""
        pages, offsets, shifts, rank = layout
        per_page = np.diff(np.searchsorted(index, offsets), append=index.size)  # offsets[0] = 0
        keys = index - np.repeat(offsets, per_page)
        keys <<= np.repeat(shifts, per_page)
        keys |= np.repeat(pages << self.PAGE_BITS, per_page)
        return (keys.astype(np.uint32), np.repeat(shifts.astype(np.uint8), per_page),
                np.repeat(rank, per_page))

    def _stored_bins(self) -> tuple[np.ndarray, ...]:
        """Non-empty bins in storage order: key, shift, page rank, totals, positives."""
        index = self._nonempty()
        return *self._stored_keys(index, self._pages_by_storage()), *self._read(index)

    def _nonempty(self) -> np.ndarray:
        """Storage indices of the non-empty bins, ascending."""
        return np.flatnonzero(self._bins[:self._used] != 0)  # bool: branch-free nonzero

    def bins(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Non-empty bins in key order: lowest key (uint32), shift (uint8), totals, positives."""
        keys, shifts, rank, total, pos = self._stored_bins()
        order = np.argsort(rank, kind="stable")  # radix sort of the runs' page ranks
        return keys[order], shifts[order], total[order], pos[order]

    def counts(self) -> ScoreCounts:
        """Counts of every bin holding positives and of the negative-only stretches between
        them (summed, as ``curve.compress`` does); a threshold is the lowest score of the
        lowest non-empty bin it stands for.

        Cuts the non-empty bins as stored (see ``_pages_by_storage``) at run starts and around
        every bin with positives, sums each piece, and sorts only the pieces by key.
        """
        index = self._nonempty()
        if index.size == 0:
            return _empty_counts()
        total, pos = self._bins[index], self._pos[index]
        layout = self._pages_by_storage()
        run_start = np.diff(layout[3].astype(np.intp), prepend=-2) != 1  # not after the last
        hit = np.flatnonzero(pos != 0)
        cut = np.zeros(index.size + 1, dtype=bool)
        cut[np.searchsorted(index, layout[1][run_start])] = True
        cut[hit] = cut[hit + 1] = True
        cuts = np.flatnonzero(cut[:-1])
        keys, _, rank = self._stored_keys(index[cuts], layout)
        order = np.argsort(rank, kind="stable")  # radix sort of the runs' page ranks
        piece_total = np.add.reduceat(total, cuts, dtype=np.int64)[order]
        piece_pos = np.add.reduceat(pos, cuts, dtype=np.int64)[order]
        return ScoreCounts(key_floor_values(keys[order]), piece_pos, piece_total - piece_pos)
