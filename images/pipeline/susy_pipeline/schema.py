"""The SUSY layout (UCI id 279): no header, 19 columns, the label first.

Label 1.0 is signal, 0.0 background. Columns 1-8 are low-level kinematic
features, 9-18 high-level features derived from them.
"""
from __future__ import annotations

import re
from typing import Final

LABEL: Final = "label"
FEATURES: Final = (
    "lepton_1_pT", "lepton_1_eta", "lepton_1_phi",
    "lepton_2_pT", "lepton_2_eta", "lepton_2_phi",
    "missing_energy_magnitude", "missing_energy_phi",
    "MET_rel", "axial_MET", "M_R", "M_TR_2", "R", "MT2", "S_R",
    "M_Delta_R", "dPhi_r_b", "cos_theta_r1",
)
COLUMNS: Final = (LABEL, *FEATURES)
N_FEATURES: Final = len(FEATURES)  # 18
N_COLUMNS: Final = len(COLUMNS)    # 19

# The sample shipped in data/: rows 0-10978 come from the UCI train partition
# (and a random sample of the whole file), rows 10979-20978 are UCI test rows.
SAMPLE_ROWS: Final = 20_979
SAMPLE_TRAIN_ROWS: Final = 10_979
SAMPLE_TEST_ROWS: Final = SAMPLE_ROWS - SAMPLE_TRAIN_ROWS

DEFAULT_TOPIC: Final = "trainData"
# A legal Kafka topic name, as Apache Kafka's Topic.validate checks it
# (clients/src/main/java/org/apache/kafka/common/internals/Topic.java: INVALID_CHARS,
# MAX_NAME_LENGTH = 249, containsOnlyPeriods): ASCII letters, digits, '.', '_' and '-', 1 to 249
# characters, not periods only. The embedded broker took "." and "..", and the trainer's
# kafka-python then failed on them with exit 1.
TOPIC_PATTERN: Final = re.compile(r"^(?!\.+$)[a-zA-Z0-9._-]{1,249}$")
DEFAULT_DATABASE: Final = "bigdata"
# Rows per evaluator model call: a 16,384-row call ran about 2.5x faster per
# core here than a 65,536-row one (its activations stay in cache).
DEFAULT_CHUNK_ROWS: Final = 16_384
MODELS_COLLECTION: Final = "MLModels"
