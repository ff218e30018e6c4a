"""block_length="auto" times forwards: one thread and a private cache per test (see timing_fixtures)."""

from timing_fixtures import one_thread, private_cache  # noqa: F401 (fixtures, autouse here)
