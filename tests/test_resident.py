"""io/resident.py: whether a merge's inputs are in the page cache, from sampled pages."""

from __future__ import annotations

import os

import pytest

from mergefast.io import resident
from mergefast.io.resident import PAGE, inputs_resident, probe_offsets


def test_probes_spread_evenly_over_the_spans_page_aligned():
    spans = [(100, 100 + 16 * PAGE), (50 * PAGE, 66 * PAGE)]
    offsets = probe_offsets(spans, probes=4)
    # the middles of four equal parts of the 32 pages the two spans hold
    assert offsets == [(100 + 4 * PAGE) // PAGE * PAGE, (100 + 12 * PAGE) // PAGE * PAGE, 54 * PAGE, 62 * PAGE]
    assert probe_offsets([(0, 100)], probes=8) == [0]  # a span under a page: one probe
    assert probe_offsets([(0, 3 * PAGE)], probes=8) == [0, PAGE, 2 * PAGE]  # one a page, spread
    assert probe_offsets([], probes=8) == [] and probe_offsets([(5, 5)]) == []


def _written(path, n=1 << 20):
    path.write_bytes(os.urandom(n))
    return path


def test_a_file_just_written_is_resident(tmp_path):
    f = _written(tmp_path / "a.safetensors")
    if not hasattr(os, "RWF_NOWAIT"):
        pytest.skip("RWF_NOWAIT is Linux's")
    g = _written(tmp_path / "b.bin")
    assert inputs_resident([(f, 8, 1 << 19), (f, 1 << 19, 1 << 20), (g, 0, None)])


def test_missing_files_and_reads_that_would_wait_are_not_resident(tmp_path, monkeypatch):
    f = _written(tmp_path / "a.safetensors")
    assert not inputs_resident([(f, 0, 1 << 20), (tmp_path / "downloading", 0, 1 << 20)])
    assert not inputs_resident([(f, 0, 2 << 20)])  # past the end of the file: a short read

    def would_wait(fd, buffers, offset, flags=0):
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(resident.os, "preadv", would_wait)
    assert not inputs_resident([(f, 0, 1 << 20)])


def test_without_rwf_nowait_nothing_is_resident(tmp_path, monkeypatch):
    f = _written(tmp_path / "a.safetensors")
    if hasattr(os, "RWF_NOWAIT"):
        monkeypatch.delattr(resident.os, "RWF_NOWAIT")
    assert not inputs_resident([(f, 0, 1 << 20)])


@pytest.mark.skipif(not hasattr(os, "RWF_NOWAIT"), reason="RWF_NOWAIT is Linux's")
def test_probes_read_with_rwf_nowait(tmp_path, monkeypatch):
    f = _written(tmp_path / "a.safetensors")
    flags = []
    real = os.preadv
    monkeypatch.setattr(resident.os, "preadv", lambda fd, bufs, at, fl=0: flags.append(fl) or real(fd, bufs, at, fl))
    assert inputs_resident([(f, 0, 1 << 20)])
    assert flags == [os.RWF_NOWAIT] * resident.PROBES_PER_FILE
