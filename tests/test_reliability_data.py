"""Reliability of the data code and the setup call (issue 12): one error base class, no private
torch API, no near-hang on a stalled network, one clear message instead of a traceback, no silent
wrong metric, no machine paths in committed results, no import cycles.

Real files in real formats, and real HTTP servers on 127.0.0.1 that each test starts and stops.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from imagenet_book.data import download, fast, imagenet, standin, voc
from imagenet_book.errors import BookError
from imagenet_book import runtime

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("cls, builtin", [
    (download.DownloadError, RuntimeError), (download.ChecksumError, RuntimeError),
    (download.UnsafeArchiveError, ValueError), (download.DatasetNotFoundError, FileNotFoundError),
    (imagenet.DatasetLayoutError, ValueError), (voc.VOCFormatError, ValueError),
    (standin.StandinError, RuntimeError), (fast.CacheBuildError, RuntimeError),
    (runtime.SetupError, ValueError),
])
def test_every_data_and_setup_error_is_a_book_error(cls, builtin):
    assert issubclass(cls, BookError) and issubclass(cls, builtin)
    with pytest.raises(BookError):
        raise cls("message")


def test_committed_bench_results_hold_no_machine_paths():
    results = sorted((REPO / "bench" / "results").glob("*.json"))
    assert results, "bench/results/*.json: nothing to check"
    absolute = re.compile(r'"(/work|/home|/tmp|/root)(/|")')
    for path in results:
        text = path.read_text(encoding="utf-8")
        json.loads(text)
        found = absolute.search(text)
        assert found is None, f"{path.name} holds an absolute path {found.group(0)!r}: record the data's name"
