"""Nothing the pipeline prints carries a secret, and a bad line is read in bounded memory (issue 22
§4, §7, §8): URIs shown as scheme and hosts, echoed values bounded and redacted, the store URI off
child processes' command lines, and the one-line error written where Kubernetes reads a container's
termination message."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from susy_pipeline import cli, redaction
from susy_pipeline.data import DataError, iter_batches
from susy_pipeline.redaction import display_uri, echo, one_line, scrub

GOOD = "0,1.5,0.1,0.2,1.1,0.3,-0.4,0.9,0.5,1.2,0.1,1.0,0.8,0.4,0.0,1.1,0.9,0.7,0.2"
STORE_URI = ("mongodb://app:storePw7781@db-0.db:27017,db-1.db:27017/models?tls=true"
             "&tlsCertificateKeyFilePassword=tlsKeyPw5523"
             "&authMechanismProperties=AWS_SESSION_TOKEN:sessTok9917")
# A secret in each place the issue names: the store URI's password and two query parameters, and
# the Kafka SASL password.
PLANTED = {"MONGODB_URI": STORE_URI, "KAFKA_SASL_PASSWORD": "saslPw3319"}
SECRETS = ("storePw7781", "tlsKeyPw5523", "sessTok9917", "saslPw3319")


def pipeline_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PLANTED}
    env.update(extra)
    return env


def test_a_uri_shows_only_its_scheme_and_hosts():
    assert display_uri(STORE_URI) == "mongodb://db-0.db:27017,db-1.db:27017"
    assert display_uri("mongodb+srv://u:p@cluster.example.net/?authSource=admin") == "mongodb+srv://cluster.example.net"
    assert display_uri("https://key:secret@minio:9000/bucket/k?X-Amz-Signature=abc") == "https://minio:9000"
    # A data file keeps its path (an error must name the file), never its query or user.
    assert display_uri("s3://bucket/dir/f.csv?X-Amz-Signature=abc#x", path=True) == "s3://bucket/dir/f.csv"
    assert display_uri("/data/susy.csv.gz", path=True) == "/data/susy.csv.gz"


def test_free_text_is_scrubbed_of_uris_and_environment_secrets(monkeypatch):
    for name, value in PLANTED.items():
        monkeypatch.setenv(name, value)
    text = (f"connect {STORE_URI} failed; password saslPw3319 was refused; "
            "read s3://bucket/k.csv?sig=1; token sessTok9917, key tlsKeyPw5523")
    shown = scrub(text)
    assert not [s for s in SECRETS if s in shown], shown
    assert "mongodb://db-0.db:27017,db-1.db:27017" in shown and "read s3://bucket/k.csv " in shown
    assert len(scrub("x" * 5000)) == redaction.MAX_MESSAGE_CHARS
    assert one_line("first\n  second\tthird") == "first second third"


def test_echoed_values_are_bounded_and_never_control_text(monkeypatch):
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "ab,saslPw3319")
    assert echo("1.5x") == "'1.5x'"
    long = echo("9" * 1000)
    assert long.startswith("'" + "9" * redaction.MAX_ECHO_CHARS + "'") and "(1000 characters)" in long
    assert "A=1" not in echo("A=1\0B=2") and "non-printable" in echo("A=1\0B=2")
    # A field cut from a secret at a comma is still masked.
    assert "saslPw3319" not in echo("KAFKA_SASL_PASSWORD=saslPw3319")


@pytest.mark.parametrize("order", ["secrets first", "commas first"])
def test_proc_self_environ_with_18_commas_prints_no_secret(tmp_path, order):
    """The issue's case: a dataset URI of /proc/self/environ plus one env variable of 18 commas (so
    the file is one line of 19 fields) made the bad-line message print the environment. Run as the
    producer would, through the command line, with secrets planted before or after the commas."""
    commas = {"SPLIT_INTO_COLUMNS": "," * 18}
    planted = {**PLANTED, **commas} if order == "secrets first" else {**commas, **PLANTED}
    env = {**planted, **pipeline_env(SUSY_TERMINATION_LOG=str(tmp_path / "termination-log"))}
    done = subprocess.run([sys.executable, "-m", "susy_pipeline", "scale", "--data", "/proc/self/environ",
                           "--skip", "0", "--out", str(tmp_path / "out")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    termination = (tmp_path / "termination-log").read_text()
    assert termination.startswith("/proc/self/environ, line 1: ")
    for text in (done.stderr, done.stdout, termination):
        assert not [s for s in SECRETS if s in text], text[-2000:]
        assert "PATH=" not in text  # nothing of the environment at all


def test_a_line_longer_than_the_bound_is_named_and_never_read_whole(tmp_path):
    """A 100 MB line (once read whole by the slow path that names a bad line: 419 MiB peak) is an
    error naming file, line and length; the peak RSS of the reading process (VmHWM: ru_maxrss of a
    child started from pytest counts pytest's own RSS at the fork) stays near its baseline of about
    75 MiB (measured here: 145-160 MiB, against 516 MiB before)."""
    path = tmp_path / "long.csv"
    with open(path, "w") as f:
        f.write((GOOD + "\n") * 10)
        f.write("1," + "0" * (100 << 20) + "\n")
        f.write(GOOD + "\n")
    script = (
        "import sys\n"
        "from susy_pipeline.data import DataError, iter_batches\n"
        "try:\n    list(iter_batches(sys.argv[1]))\nexcept DataError as err:\n    print(err)\n"
        "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) // 1024)\n")
    done = subprocess.run([sys.executable, "-c", script, str(path)], cwd=ROOT, env=pipeline_env(),
                          capture_output=True, text=True, timeout=300)
    message, peak_mib = done.stdout.strip().splitlines()
    assert message == (f"{path}, line 11: the line is {(100 << 20) + 2:,} bytes long, over the limit of "
                       f"{1 << 20:,} (a SUSY line is under 500 bytes)"), done.stderr[-2000:]
    assert int(peak_mib) < 200, f"peak RSS {peak_mib} MiB reading a 100 MB line"


def test_a_long_line_in_gzip_is_named_too(tmp_path):
    import gzip

    path = tmp_path / "long.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write((GOOD + "\n") * 3 + "0," * (3 << 20) + "\n")
    with pytest.raises(DataError, match=r"long\.csv\.gz, line 4: the line is 6,291,456 bytes long"):
        list(iter_batches(path))


def test_termination_message_is_one_redacted_line_and_skipped_without_its_directory(tmp_path, monkeypatch):
    for name, value in PLANTED.items():
        monkeypatch.setenv(name, value)
    target = tmp_path / "termination-log"
    monkeypatch.setenv(cli.TERMINATION_LOG_ENV, str(target))
    code = cli.main(["scale", "--data", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert target.read_text() == f"{tmp_path / 'missing.csv'}: no such file"
    # A bug (exit 1) names its exception type; the message is scrubbed like any other.
    cli.write_termination_message(KeyError(f"at {STORE_URI}"))
    text = target.read_text()
    assert text.startswith("KeyError: ") and "mongodb://db-0.db:27017,db-1.db:27017" in text
    assert not [s for s in SECRETS if s in text]
    monkeypatch.setenv(cli.TERMINATION_LOG_ENV, str(tmp_path / "no-such-dir" / "termination-log"))
    cli.write_termination_message(RuntimeError("x"))
    assert not (tmp_path / "no-such-dir").exists()


@pytest.mark.integration
def test_run_local_shards_get_the_store_uri_by_environment_not_argv(tmp_path, monkeypatch):
    """Every shard `run-local` starts reads the store from MONGODB_URI: its command line (what
    /proc/PID/cmdline shows any user of the machine) names no store. The shards find the model, which
    exists only in the store named in their environment."""
    from support.models import small_model_in_store
    from susy_pipeline.commands import run_local

    store_uri = f"sqlite:///{tmp_path}/only-here.sqlite3"
    model_id, _ = small_model_in_store(store_uri, "argv-check")
    seen = []
    real_popen = subprocess.Popen

    def recording_popen(cmd, **kwargs):
        proc = real_popen(cmd, **kwargs)
        cmdline = b""
        while not cmdline and proc.poll() is None:  # empty for an instant while the child execs
            cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        seen.append((cmdline.split(b"\0"), kwargs.get("env")))
        return proc

    monkeypatch.setattr(run_local.subprocess, "Popen", recording_popen)
    monkeypatch.delenv("MONGODB_URI", raising=False)
    summaries = run_local.run_parallel(model_ref=model_id, inputs=[str(ROOT / "data" / "susy-sample.csv.gz")],
                                       evaluation="argv-check", shard_count=2, store_uri=store_uri,
                                       timeout_s=300)
    assert len(summaries) == 2 and len(seen) == 2
    for argv, env in seen:
        assert b"evaluate" in argv and not [a for a in argv if b"sqlite" in a or a == b"--store"], argv
        assert env["MONGODB_URI"] == store_uri
    assert json.dumps(summaries)  # the shards' printed summaries came back whole


def test_every_log_line_of_a_command_is_redacted(monkeypatch, capsys):
    """A library's log line quoting a URI or a secret (pymongo, botocore and kafka-python all log
    their errors) passes the command line's one filter on its way to stderr."""
    import logging

    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "saslPw3319")
    root = logging.getLogger()
    kept = root.handlers[:]
    root.handlers[:] = []
    try:
        cli.configure_logging(False)
        logging.getLogger("some.library").warning("retrying %s with password %s", STORE_URI, "saslPw3319")
        for handler in root.handlers:
            handler.flush()
    finally:
        root.handlers[:] = kept
    err = capsys.readouterr().err
    assert "retrying mongodb://db-0.db:27017,db-1.db:27017/models with password ***" in err
    assert not [s for s in SECRETS if s in err]
