"""`python -m features info STORE --skipped`: every file of the listing that a store holds no embedding for."""
from features.reader import FeatureStore


def _shown(text: str) -> str:
    """Text with control characters (a newline, a terminal escape) quoted, as Python writes it."""
    return text if text.isprintable() else repr(text)


def skipped_lines(path) -> str:
    """The store's skipped files, one `path: reason` line each, sorted by path."""
    with FeatureStore(path) as store:
        skipped = sorted(store.skipped)
    return "\n".join([f"{path}: {len(skipped)} skipped"] + [f"  {_shown(p)}: {_shown(why)}" for p, why, *_ in skipped])
