"""Test support for the operator: the API emulator, the Job runner, the harness (issue 6)."""
