"""`download`: fetch the full UCI SUSY.csv.gz (5,000,000 rows, about 880 MB).

Integrity: the first 1,000 lines of SUSY.csv are the first 1,000 rows of the
shipped sample (byte-identical, see data/README.md), so their SHA-256 is pinned
here and checked on every download; `--sha256` pins the whole file as well.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import logging
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request

from ..errors import Unavailable

log = logging.getLogger(__name__)

SUSY_URL = "https://archive.ics.uci.edu/ml/machine-learning-databases/00279/SUSY.csv.gz"
SUSY_ROWS = 5_000_000
DEFAULT_DEST = "data/SUSY.csv.gz"
FIRST_1000_LINES_SHA256 = "5ce0b783a6e351ddd9235815554f1c68213c892528e7d319995df7180782eeea"


class DownloadError(Unavailable, RuntimeError):
    pass


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("download", help="fetch the full UCI SUSY.csv.gz (checksum verified)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=SUSY_URL, help="where to fetch it (default: %(default)s)")
    p.add_argument("--dest", default=DEFAULT_DEST, help="output file (default: %(default)s)")
    p.add_argument("--sha256", help="also require this SHA-256 of the whole file")
    p.add_argument("--timeout", type=float, default=30, help="network timeout, seconds")
    p.set_defaults(run=run)


def verify(path: str, sha256: str | None = None, check_rows: bool = True) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if sha256 and digest.hexdigest() != sha256.lower():
        raise DownloadError(f"{path}: SHA-256 {digest.hexdigest()} is not the expected {sha256}")
    head = hashlib.sha256()
    rows = 0
    with gzip.open(path, "rb") as f:
        for rows, line in enumerate(f, start=1):
            if rows <= 1000:
                head.update(line)
            elif not check_rows:
                break
    if head.hexdigest() != FIRST_1000_LINES_SHA256:
        raise DownloadError(f"{path}: the first 1,000 rows differ from UCI SUSY.csv")
    if check_rows and rows != SUSY_ROWS:
        raise DownloadError(f"{path}: {rows} rows, expected {SUSY_ROWS}")
    return {"path": path, "sha256": digest.hexdigest(), "rows": rows if check_rows else None}


def run(args: argparse.Namespace) -> dict:
    return download(url=args.url, dest=args.dest, sha256=args.sha256, timeout=args.timeout)


def download(*, url: str = SUSY_URL, dest: str = DEFAULT_DEST, sha256: str | None = None,
             timeout: float = 30) -> dict:
    """Fetch `url` to `dest` (written beside it, verified, then renamed); return what `verify` found."""
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    started = time.perf_counter()
    tmp = tempfile.NamedTemporaryFile(dir=os.path.dirname(os.path.abspath(dest)),
                                      prefix=".SUSY-", suffix=".part", delete=False)
    try:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                log.info("downloading %s (%s bytes)", url, response.headers.get("Content-Length", "?"))
                shutil.copyfileobj(response, tmp, length=1 << 20)
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            raise DownloadError(
                f"cannot download {url}: {getattr(err, 'reason', err)}. This machine may be "
                "offline: fetch SUSY.csv.gz elsewhere, copy it here, and pass it with --data; "
                "the bundled sample (data/susy-sample.csv.gz) needs no download.") from err
        tmp.close()
        facts = verify(tmp.name, sha256)
        os.replace(tmp.name, dest)
    finally:
        tmp.close()
        if os.path.exists(tmp.name):
            os.unlink(tmp.name)
    log.info("saved %s in %.0f s", dest, time.perf_counter() - started)
    return {**facts, "path": dest}
