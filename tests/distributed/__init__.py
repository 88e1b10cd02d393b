"""Worker scripts for tests/test_distributed.py: each runs in its own process (device counts are set before import)."""
