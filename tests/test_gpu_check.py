"""make gpu-check's script: names the device and writes its JSON summary where asked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_writes_a_json_summary_naming_the_device(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--skip-tests", "--skip-bench",
         "--out", str(tmp_path)], capture_output=True, text=True, check=True)
    (written,) = tmp_path.glob("gpu-check-*.json")
    summary = json.loads(written.read_text())
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert summary["device"] == expected and summary["device_name"]
    assert summary["device_name"] in proc.stdout and str(written) in proc.stdout
    assert summary["torch"] == torch.__version__
    assert summary["tests"] == {"status": "skipped"} and summary["benchmarks"] == {}
    assert written.name.startswith(f"gpu-check-{summary['date'][:10]}-{expected}-")
    assert not list(tmp_path.glob("*.tmp")), "the summary is written atomically"
