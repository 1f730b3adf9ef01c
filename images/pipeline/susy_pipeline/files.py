"""Opening dataset paths and URIs: local files, `s3://`, `gs://` and `https://`.

Every stage that reads or writes a data file (`produce --data`, `evaluate
--data`, `scale --data` and `--out`) opens it here, through pyarrow's own
filesystems (`pyarrow.fs`); nothing here speaks HTTP itself.

- `PATH`, `file://PATH`: the local disk, opened as before (pyarrow and igzip
  open the path themselves);
- `s3://BUCKET/KEY`: `S3FileSystem`, read and write; credentials, region and
  endpoint from the standard AWS variables;
- `gs://BUCKET/KEY`: `GcsFileSystem`, read and write; Google's default
  credentials (`GOOGLE_APPLICATION_CREDENTIALS`, workload identity);
- `https://HOST/BUCKET/KEY` (and `http://`): read only, a public object of an
  S3-protocol store, path style: `S3FileSystem`, anonymous, endpoint
  `https://HOST`.

pyarrow 25 has no HTTP filesystem (apache/arrow#23849 is open), so `https://`
is read as a public object of an S3-protocol store (AWS S3, Google Cloud
Storage's XML API, MinIO, Ceph), which answers HEAD, ranged GET and listing.

`S3FileSystem(...)` reads credentials (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `~/.aws`, instance metadata) and the
region (`AWS_REGION`, `AWS_DEFAULT_REGION`) by itself, but, unlike
`FileSystem.from_uri`, not the endpoint (apache/arrow#49643, checked on pyarrow
25.0.1). `from_uri` cannot set a retry strategy, so the filesystem is built
here and `AWS_ENDPOINT_URL_S3` (else `AWS_ENDPOINT_URL`) is passed as
`endpoint_override`, `AWS_CA_BUNDLE` as `tls_ca_file_path`.

Globs (`*`, `?`, `[...]` after the bucket; as in a local glob, no wildcard
matches a `/`) resolve by one listing of the prefix before the first wildcard,
sorted, so every shard computes the same plan.

Errors name the URI and say what kind they are: a missing bucket, object or
glob match is a `DataError` (exit 2); refused credentials a `StorageDenied`
(exit 2, naming the Secret from `SUSY_DATA_SECRET` when the operator sets it);
an endpoint that does not answer after bounded retries `StorageUnavailable`
(exit 3).

Remote reads go through a counting reader: `remote_read_totals()` is the bytes
and read calls this process fetched from object storage (each call one ranged
GET), so a shard can report what it read. `read_head` keeps the first bytes of a remote object
it fetched until a reader of that object reads through them: a head sampled to plan (progress
estimates) is not fetched a second time when the object is streamed.
"""
from __future__ import annotations

import fnmatch
import functools
import glob
import io
import os
import threading
from typing import BinaryIO
from urllib.parse import urlsplit

from .errors import DataError, StorageDenied, StorageUnavailable
from .redaction import display_uri, scrub

LOCAL_SCHEMES = ("", "file")
REMOTE_SCHEMES = ("s3", "gs", "gcs", "https", "http")
WRITABLE_SCHEMES = ("s3", "gs", "gcs")
GLOB_CHARS = "*?["

# Bounded retries: an endpoint that does not answer fails the command in about
# ATTEMPTS x REQUEST_TIMEOUT_S (measured here: 2 attempts of 2 s against a socket
# that never answers took 4.9 s). On Linux pyarrow's request timeout is curl's
# low-speed limit (under 1 byte/s for that long), so it never cuts a slow but
# moving transfer of a large file.
CONNECT_TIMEOUT_S = float(os.environ.get("SUSY_STORAGE_CONNECT_TIMEOUT_S", 5))
REQUEST_TIMEOUT_S = float(os.environ.get("SUSY_STORAGE_TIMEOUT_S", 10))
ATTEMPTS = int(os.environ.get("SUSY_STORAGE_ATTEMPTS", 3))

# Sequential reads (CSV, CSV.gz) fetch this much per GET. One GET per 1 MiB
# CSV block would pay a round trip per block.
STREAM_BUFFER_BYTES = 8 << 20

SECRET_ENV = "SUSY_DATA_SECRET"

# pyarrow reports S3 and GCS failures as OSError whose text carries the AWS SDK's
# error name or google-cloud-cpp's status code; there is no structured field.
_MISSING = ("NO_SUCH_BUCKET", "NO_SUCH_KEY", "RESOURCE_NOT_FOUND", "NOT_FOUND")
_DENIED = ("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "EXPIRED_TOKEN",
           "INVALID_CLIENT_TOKEN_ID", "MISSING_AUTHENTICATION_TOKEN", "UNRECOGNIZED_CLIENT",
           "PERMISSION_DENIED", "UNAUTHENTICATED", "HTTP response code 403", "HTTP response code 401")
_UNAVAILABLE = ("NETWORK_CONNECTION", "curlCode", "SERVICE_UNAVAILABLE", "SLOW_DOWN", "THROTTLING",
                "REQUEST_TIMEOUT", "INTERNAL_FAILURE", "UNAVAILABLE", "DEADLINE_EXCEEDED",
                "Could not connect", "Timeout was reached")


# --- names -----------------------------------------------------------------------

def scheme(path: str) -> str:
    """The URI scheme, lower case; '' for a plain path. Raises DataError for an unknown one."""
    if "://" not in path:
        return ""
    name = path.split("://", 1)[0].lower()
    if name not in LOCAL_SCHEMES + REMOTE_SCHEMES:
        raise DataError(path, None, f"unknown scheme {name + '://'!r} (expected a local path, file://, "
                                    "s3://, gs:// or https://)")
    return name


def is_remote(path: str) -> bool:
    return scheme(str(path)) in REMOTE_SCHEMES


def local_path(path: str) -> str:
    path = str(path)
    return path[len("file://"):] if path.lower().startswith("file://") else path


def join(directory: str, name: str) -> str:
    if is_remote(directory):
        return directory.rstrip("/") + "/" + name
    return os.path.join(local_path(directory), name)


def _split(uri: str) -> tuple[str, str, str]:
    """(scheme, filesystem key, path inside that filesystem) of a remote URI."""
    name = scheme(uri)
    parts = urlsplit(uri)
    if name in ("http", "https"):
        path = parts.path.lstrip("/")
        if not parts.netloc or "/" not in path:
            raise DataError(uri, None,
                            f"expected {name}://HOST/BUCKET/KEY (an S3-protocol object, path style)")
        return name, f"{name}://{parts.netloc}", path
    if not parts.netloc:
        raise DataError(uri, None, f"expected {name}://BUCKET/KEY")
    return name, name, parts.netloc + parts.path


def _uri(fs_key: str, path: str) -> str:
    return f"{fs_key}://{path}" if "://" not in fs_key else f"{fs_key}/{path}"


# --- filesystems -------------------------------------------------------------------

@functools.lru_cache(maxsize=None)  # one client (and its connection pool) per endpoint
def _filesystem(fs_key: str):
    import pyarrow.fs as pafs

    retry = pafs.AwsStandardS3RetryStrategy(max_attempts=ATTEMPTS)
    timeouts = {"connect_timeout": CONNECT_TIMEOUT_S, "request_timeout": REQUEST_TIMEOUT_S}
    tls = {"tls_ca_file_path": os.environ["AWS_CA_BUNDLE"]} if os.environ.get("AWS_CA_BUNDLE") else {}
    if fs_key == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return pafs.S3FileSystem(endpoint_override=endpoint or None, retry_strategy=retry, **timeouts, **tls)
    if fs_key in ("gs", "gcs"):
        from datetime import timedelta

        return pafs.GcsFileSystem(retry_time_limit=timedelta(seconds=ATTEMPTS * REQUEST_TIMEOUT_S))
    # https://HOST: a public S3-protocol store, read anonymously, path style.
    return pafs.S3FileSystem(anonymous=True, endpoint_override=fs_key, retry_strategy=retry,
                             region=os.environ.get("AWS_REGION") or "us-east-1", **timeouts, **tls)


def _fail(uri: str, err: OSError, doing: str) -> Exception:
    """The error to raise for a failed storage call on `uri`."""
    text = str(err)
    if isinstance(err, FileNotFoundError) or any(code in text for code in _MISSING):
        return DataError(uri, None, _missing_problem(uri))
    if any(code in text for code in _DENIED):
        secret = os.environ.get(SECRET_ENV)
        where = (f"check the credentials in Secret {secret!r}" if secret else
                 "check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or "
                 "GOOGLE_APPLICATION_CREDENTIALS)")
        return StorageDenied(uri, None, f"access denied while {doing}: {where} ({_short(text)})")
    if any(code in text for code in _UNAVAILABLE):
        return StorageUnavailable(f"{display_uri(uri, path=True)}: object storage unreachable while {doing}, after {ATTEMPTS} "
                                  f"attempts ({_short(text)})")
    return err


def _short(text: str) -> str:
    return scrub(text.split("(Request ID")[0].strip(), limit=300)


def _missing_problem(uri: str) -> str:
    try:
        name, fs_key, path = _split(uri)
        bucket = path.split("/", 1)[0]
        import pyarrow.fs as pafs

        if _filesystem(fs_key).get_file_info(bucket).type == pafs.FileType.NotFound:
            return f"bucket {bucket!r} does not exist"
    except (OSError, DataError):
        pass
    return "no such object"


# --- resolving ---------------------------------------------------------------------

def resolve(patterns: list[str] | tuple[str, ...]) -> list[str]:
    """The input files that paths, URIs and globs name, sorted, each once.

    Raises DataError for a pattern that matches nothing (naming it).
    """
    found: set[str] = set()
    for pattern in patterns:
        pattern = str(pattern)
        matches = _resolve_remote(pattern) if is_remote(pattern) else _resolve_local(pattern)
        if not matches:
            raise DataError(pattern, None, _nothing_matches(pattern))
        found.update(matches)
    return sorted(found)


def _nothing_matches(pattern: str) -> str:
    if not is_remote(pattern):
        return "no such file (the glob matches no file)" if glob.has_magic(pattern) else "no such file"
    problem = _missing_problem(pattern)
    if _has_glob(pattern) and problem == "no such object":
        return "the glob matches no object"
    return problem


def _has_glob(pattern: str) -> bool:
    return any(c in pattern for c in GLOB_CHARS)


def _resolve_local(pattern: str) -> list[str]:
    pattern = local_path(pattern)
    matches = glob.glob(pattern) if glob.has_magic(pattern) else [pattern]
    return [os.path.normpath(m) for m in matches if os.path.isfile(m)]


def _resolve_remote(pattern: str) -> list[str]:
    import pyarrow.fs as pafs

    name, fs_key, path = _split(pattern)
    fs = _filesystem(fs_key)
    if not _has_glob(path):
        info = _call(pattern, "looking it up", fs.get_file_info, path)
        return [pattern] if info.type == pafs.FileType.File else []
    first = min(path.find(c) for c in GLOB_CHARS if c in path)
    base = path[:first].rsplit("/", 1)[0]
    if "/" not in path[:first]:
        raise DataError(pattern, None, "a glob in the bucket name is not supported")
    selector = pafs.FileSelector(base, recursive="/" in path[first:], allow_not_found=True)
    infos = _call(pattern, "listing it", fs.get_file_info, selector)
    depth = path.count("/")
    return [_uri(fs_key, i.path) for i in infos if i.type == pafs.FileType.File
            and i.path.count("/") == depth and fnmatch.fnmatchcase(i.path, path)]


def _call(uri: str, doing: str, fn, *args):
    try:
        return fn(*args)
    except OSError as err:
        raise _fail(uri, err, doing) from err


def size(path: str) -> int:
    """The size of a file in bytes."""
    if not is_remote(path):
        return os.path.getsize(local_path(path))
    import pyarrow.fs as pafs

    _, fs_key, inner = _split(path)
    info = _call(path, "looking it up", _filesystem(fs_key).get_file_info, inner)
    if info.type != pafs.FileType.File:
        raise DataError(path, None, _missing_problem(path))
    return int(info.size)


def require(path: str) -> None:
    """Raise DataError (naming `path`) unless it is an existing file."""
    if is_remote(path):
        size(path)
    elif not os.path.isfile(local_path(path)):
        raise DataError(path, None, "no such file")


# --- reading -----------------------------------------------------------------------

_totals_lock = threading.Lock()
_totals = {"bytes": 0, "reads": 0}


def remote_read_totals() -> dict[str, int]:
    """Bytes and read calls (each one ranged GET) fetched from object storage by this process."""
    with _totals_lock:
        return dict(_totals)


# Heads of remote objects fetched by `read_head`, by URI, until a reader has read through one.
_heads: dict[str, bytes] = {}


def read_head(path: str, n: int) -> bytes:
    """The first `n` bytes of a file. A remote object's are kept for the next reader of it, which
    reads them from memory (then they are dropped): sampling a file's head before streaming the
    file fetches those bytes once, as `remote_read_totals` shows."""
    with _totals_lock:
        kept = _heads.get(path)
    if kept is not None and len(kept) >= n:
        return kept[:n]
    with open_random(path) as f:
        head = f.read(n)
    if is_remote(path):
        with _totals_lock:
            _heads[path] = head
    return head


class _CountingReader(io.RawIOBase):
    """A remote file as a Python binary stream that counts what it fetches.

    Each `readinto` is one `read_at` of the pyarrow file, which is one ranged
    GET of exactly that many bytes; the count is what came back from the
    server. Storage errors during a read become DataError/StorageDenied/
    StorageUnavailable naming the URI (not OSError, which readers take for
    bad data).
    """

    def __init__(self, uri: str, native) -> None:
        self.uri = uri
        self._f = native
        self._size = native.size()
        self._pos = 0
        self._ahead: tuple[int, int, threading.Thread, list] | None = None  # start, stop, fetcher, result

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def size(self) -> int:
        return self._size

    def readinto(self, buffer) -> int:
        want = min(len(buffer), self._size - self._pos)
        if want <= 0:
            return 0
        data = self._from_head(self._pos, want)
        if data is None:
            data = self._from_prefetch(self._pos, want)
        if data is None:
            data = self._read_at(self._pos, want)
        n = len(data)
        memoryview(buffer)[:n] = data
        self._pos += n
        return n

    def _read_at(self, start: int, length: int):
        try:
            data = self._f.read_at(length, start)
        except OSError as err:
            raise _fail(self.uri, err, "reading it") from err
        with _totals_lock:
            _totals["bytes"] += len(data)
            _totals["reads"] += 1
        return data

    def _from_head(self, pos: int, length: int):
        """The bytes of a head `read_head` kept (up to its end, a short read), or None."""
        with _totals_lock:
            head = _heads.get(self.uri)
            if head is None or pos >= len(head):
                return None
            if pos + length >= len(head):
                del _heads[self.uri]  # read through: each kept byte is used once
        return memoryview(head)[pos:pos + length]

    def prefetch(self, start: int, stop: int) -> None:
        """Fetch bytes `start..stop-1` in the background; a read inside them is served from memory.

        One range at a time (the next Parquet row group while this one is
        decoded), so memory stays at about two row groups.
        """
        result: list = []

        def fetch() -> None:
            try:
                result.append(self._read_at(start, stop - start))
            except BaseException as err:  # re-raised by the read that needs these bytes
                result.append(err)

        thread = threading.Thread(target=fetch, name="prefetch", daemon=True)
        thread.start()
        self._ahead = (start, stop, thread, result)

    def _from_prefetch(self, pos: int, length: int):
        """The bytes from the range being prefetched (waiting for it), or None if it does not hold them."""
        if self._ahead is None:
            return None
        start, stop, thread, result = self._ahead
        if not start <= pos or pos + length > stop:
            return None
        thread.join()
        data = result[0]
        if isinstance(data, BaseException):
            self._ahead = None
            raise data
        if pos + length == stop:
            self._ahead = None  # all of it used
        return memoryview(data)[pos - start:pos - start + length]

    def close(self) -> None:
        self._f.close()
        super().close()


def open_random(path: str) -> BinaryIO:
    """A seekable binary file: local `open`, or a counting reader over a remote object."""
    if not is_remote(path):
        try:
            return open(local_path(path), "rb")
        except FileNotFoundError:
            raise DataError(path, None, "no such file") from None
    _, fs_key, inner = _split(path)
    native = _call(path, "opening it", _filesystem(fs_key).open_input_file, inner)
    return _CountingReader(path, native)


def open_stream(path: str) -> BinaryIO:
    """A binary file for reading from the start: remote reads fetch STREAM_BUFFER_BYTES per GET."""
    raw = open_random(path)
    if not is_remote(path):
        return raw
    return io.BufferedReader(raw, buffer_size=STREAM_BUFFER_BYTES)


# --- writing -----------------------------------------------------------------------

def prepare_output_dir(directory: str) -> None:
    """Create a local directory; for a bucket, check that it exists (scale never creates buckets)."""
    if not is_remote(directory):
        os.makedirs(local_path(directory), exist_ok=True)
        return
    import pyarrow.fs as pafs

    name, fs_key, path = _split(directory.rstrip("/") + "/")
    if name not in WRITABLE_SCHEMES:
        raise DataError(directory, None, f"{name}:// is read only; write to s3:// or gs://")
    bucket = path.split("/", 1)[0]
    info = _call(directory, "looking up its bucket", _filesystem(fs_key).get_file_info, bucket)
    if info.type == pafs.FileType.NotFound:
        raise DataError(directory, None, f"bucket {bucket!r} does not exist")


class _Output(io.RawIOBase):
    """A remote object being written; it appears under its name only when closed without error.

    A process killed mid-write leaves no object (an S3 multipart upload
    completes only on close). pyarrow has no abort in Python, and its S3
    stream completes the upload when dropped, so on an exception the context
    manager closes and then deletes the object.
    """

    def __init__(self, uri: str, fs, inner: str) -> None:
        super().__init__()
        self.uri = uri
        self._fs, self._inner = fs, inner
        self._f = _call(uri, "creating it", functools.partial(fs.open_output_stream, compression=None), inner)
        self._pos = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def write(self, data) -> int:
        try:
            n = self._f.write(data)
        except OSError as err:
            raise _fail(self.uri, err, "writing it") from err
        self._pos += n
        return n

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._f.close()
        except OSError as err:
            raise _fail(self.uri, err, "finishing it") from err
        finally:
            super().close()

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.close()
            return
        try:
            self._f.close()
            self._fs.delete_file(self._inner)
        except OSError:
            pass  # the original error says more
        super().close()


def open_output(path: str) -> _Output:
    """A writable remote object (S3: a multipart upload, completed on close)."""
    name, fs_key, inner = _split(path)
    if name not in WRITABLE_SCHEMES:
        raise DataError(path, None, f"{name}:// is read only; write to s3:// or gs://")
    return _Output(path, _filesystem(fs_key), inner)
