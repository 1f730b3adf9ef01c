"""SUSY streaming pipeline stages: produce to Kafka, train from Kafka, evaluate in shards."""
__version__ = "0.1.0"
