"""The conversion's read-ahead thread: same values, in order, within its memory budget, errors handed over."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from regnet_core.tensors import LazyTensor, Prefetcher, TensorError


class Source:
    """LazyTensors that count their loads and how far the pieces ran ahead of the consumer."""

    def __init__(self) -> None:
        self.loads: dict[str, int] = {}
        self.made = 0  # pieces made so far, by every tensor
        self.lock = threading.Lock()

    def whole(self, name: str, values: np.ndarray, fail: bool = False) -> LazyTensor:
        def load() -> np.ndarray:
            with self.lock:
                self.loads[name] = self.loads.get(name, 0) + 1
            if fail:
                raise TensorError(f"{name}: the file went away")
            return values.copy()

        return LazyTensor(values.shape, "float32", load, name, load)

    def pieces(self, name: str, values: np.ndarray, rows: int) -> LazyTensor:
        def blocks():
            with self.lock:
                self.loads[name] = self.loads.get(name, 0) + 1
            for start in range(0, values.shape[0], rows):
                with self.lock:
                    self.made += 1
                yield values[start : start + rows].copy()

        def load() -> np.ndarray:
            return np.concatenate(list(blocks()))

        return LazyTensor(values.shape, "float32", load, name, load, blocks)


def _values(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_tensors_come_back_equal_and_each_is_read_once():
    source = Source()
    arrays = {f"t{i}": _values(i, (10, 7)) for i in range(12)}
    prefetcher = Prefetcher({n: source.whole(n, a) for n, a in arrays.items()}, budget=3 * 280)
    try:
        wrapped = prefetcher.wrap()
        for name, array in arrays.items():
            if int(name[1:]) % 2:
                got = np.concatenate([b.reshape(-1) for b in wrapped[name].iter_stored()]).reshape(array.shape)
            else:
                got = wrapped[name].load()
            assert np.array_equal(got, array)
    finally:
        prefetcher.close()
    assert source.loads == {name: 1 for name in arrays}


def test_a_tensor_larger_than_the_budget_streams_in_pieces_a_budget_ahead_at_most():
    source = Source()
    big = _values(1, (64, 100))  # 64 pieces of 400 bytes; the budget holds 4
    consumed = 0
    ahead = []
    prefetcher = Prefetcher({"big": source.pieces("big", big, 1)}, budget=1600)
    try:
        pieces = []
        for piece in prefetcher.wrap()["big"].iter_stored():
            consumed += 1
            time.sleep(0.002)  # a slow writer: the thread fills the budget and waits
            with source.lock:
                ahead.append(source.made - consumed)
            pieces.append(piece.copy())
    finally:
        prefetcher.close()
    assert np.array_equal(np.concatenate(pieces), big)
    assert max(ahead) <= 1600 // 400 + 1  # the budget, and the piece the thread holds
    assert max(ahead) >= 2  # and it did read ahead
    assert source.loads == {"big": 1}


def test_a_streamed_tensor_asked_for_whole_is_joined_from_its_pieces():
    source = Source()
    big = _values(2, (30, 50))
    prefetcher = Prefetcher({"big": source.pieces("big", big, 4), "after": source.whole("after", big[:2])}, budget=800)
    try:
        time.sleep(0.05)  # let the thread start the big one
        wrapped = prefetcher.wrap()
        assert np.array_equal(wrapped["big"].load(), big)
        assert np.array_equal(wrapped["after"].load(), big[:2])
    finally:
        prefetcher.close()
    assert source.loads == {"big": 1, "after": 1}


def test_a_tensor_asked_for_out_of_order_is_loaded_by_its_consumer_and_never_again():
    source = Source()
    arrays = {f"t{i}": _values(i, (5, 5)) for i in range(6)}
    prefetcher = Prefetcher({n: source.whole(n, a) for n, a in arrays.items()}, budget=100)
    try:
        wrapped = prefetcher.wrap()
        assert np.array_equal(wrapped["t5"].load(), arrays["t5"])
        for name in list(arrays)[:5]:
            assert np.array_equal(wrapped[name].load(), arrays[name])
    finally:
        prefetcher.close()
    assert source.loads == {name: 1 for name in arrays}


def test_an_error_reading_ahead_is_raised_by_the_consumer_of_that_tensor():
    source = Source()
    ok = _values(3, (4, 4))
    prefetcher = Prefetcher({"ok": source.whole("ok", ok), "bad": source.whole("bad", ok, fail=True)})
    try:
        wrapped = prefetcher.wrap()
        assert np.array_equal(wrapped["ok"].load(), ok)
        with pytest.raises(TensorError, match="bad: the file went away"):
            wrapped["bad"].load()
    finally:
        prefetcher.close()


def test_closing_stops_a_thread_waiting_for_room_even_with_a_stream_left_half_read():
    source = Source()
    big = _values(4, (200, 100))
    prefetcher = Prefetcher({"big": source.pieces("big", big, 1), "next": source.whole("next", big[:1])}, budget=800)
    pieces = prefetcher.wrap()["big"].iter_stored()
    next(pieces)  # the writer gives up after one piece
    time.sleep(0.05)
    started = time.perf_counter()
    prefetcher.close()
    assert time.perf_counter() - started < 5
    assert not prefetcher._thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        next(pieces)


def test_a_large_tensor_is_read_ahead_while_a_tensor_the_writer_takes_late_waits():
    """Flax writes batch_stats last: a waiting small tensor must not keep the next large one from starting."""
    source = Source()
    late = _values(5, (10, 10))  # 400 bytes, taken last
    big = _values(6, (40, 100))  # 40 pieces of 400 bytes
    prefetcher = Prefetcher({"late": source.whole("late", late), "big": source.pieces("big", big, 1)}, budget=4000)
    try:
        time.sleep(0.2)
        with source.lock:
            made_before_asked = source.made
        wrapped = prefetcher.wrap()
        assert np.array_equal(np.concatenate(list(wrapped["big"].iter_stored())), big)
        assert np.array_equal(wrapped["late"].load(), late)
    finally:
        prefetcher.close()
    assert made_before_asked >= 2
    assert source.loads == {"late": 1, "big": 1}
