"""The one way featbench's commands end: an error is one line on stderr, never a traceback."""
import signal
import sys

from features.errors import FeatbenchError


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run_cli(main_fn, argv=None) -> int:
    """Run a CLI entry point: FeatbenchError → one line on stderr, exit 2; Ctrl-C → exit 130.

    SIGTERM (`kill PID`, a scheduler stopping the job) is taken as Ctrl-C: finished work is kept."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return main_fn(argv)
    except FeatbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; re-run the same command to resume", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
