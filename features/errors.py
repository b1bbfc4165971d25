"""Errors that featbench reports as one clear line instead of a traceback."""


class FeatbenchError(Exception):
    """A user-facing error: the message names the file and what to do."""


class StoreError(FeatbenchError):
    """A feature store is missing, foreign, truncated or inconsistent."""


class DamagedStore(StoreError):
    """A store file that is truncated, corrupt or unfinished: nothing in it can be read, so a re-run replaces it."""
