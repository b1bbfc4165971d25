"""The one way featbench's commands end: an error is one line on stderr, never a traceback."""
import sys

from features.errors import FeatbenchError


def run_cli(main_fn, argv=None) -> int:
    """Run a CLI entry point: FeatbenchError → one line on stderr, exit 2; Ctrl-C → exit 130."""
    try:
        return main_fn(argv)
    except FeatbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; re-run the same command to resume", file=sys.stderr)
        return 130
