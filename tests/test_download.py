"""`download`: the real download code, offline here; its checks on files made from the sample."""
from __future__ import annotations

import gzip
import subprocess
import sys

import pytest

from susy_pipeline.commands.download import DownloadError, verify


def test_offline_download_fails_with_a_clear_message_and_exit_3(tmp_path):
    dest = tmp_path / "SUSY.csv.gz"
    done = subprocess.run([sys.executable, "-m", "susy_pipeline", "download", "--url",
                           "http://127.0.0.1:9/SUSY.csv.gz", "--dest", str(dest), "--timeout", "5"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert "cannot download http://127.0.0.1:9/SUSY.csv.gz" in done.stderr
    assert "offline" in done.stderr and "--data" in done.stderr
    assert not dest.exists() and list(tmp_path.iterdir()) == []  # no partial file left behind


def test_checks_accept_the_uci_head_and_refuse_anything_else(sample, tmp_path):
    with gzip.open(sample, "rb") as f:
        lines = f.readlines()
    head = tmp_path / "head.csv.gz"
    head.write_bytes(gzip.compress(b"".join(lines[:1500])))
    assert verify(str(head), check_rows=False)["rows"] is None
    with pytest.raises(DownloadError, match="1500 rows, expected 5000000"):
        verify(str(head))
    other = tmp_path / "other.csv.gz"
    other.write_bytes(gzip.compress(b"".join(lines[1000:2500])))
    with pytest.raises(DownloadError, match="first 1,000 rows differ"):
        verify(str(other), check_rows=False)
    with pytest.raises(DownloadError, match="SHA-256 .* is not the expected 00"):
        verify(str(head), sha256="00" * 32, check_rows=False)
