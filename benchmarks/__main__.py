"""`python -m benchmarks COMMAND`: featbench's runs turned into the reports users come for.

  run CONFIG.toml        backbones × heads on one dataset (+ fine-tunes), then the report
  finetune --backbone N  a fine-tuned baseline on the heads' split (--mode full|bn-head|head)
  report FOLDER          rebuild a report from existing metrics files
  speed                  extraction images/second against the seed notebooks' pipeline
  scale                  logreg out of core on a 1,000,000 × 1,280 synthetic store: time and peak RSS

`python -m benchmarks COMMAND --help` for each command's options.
"""
import importlib
import sys

from features.cli import run_cli
from features.errors import FeatbenchError

COMMANDS = {"run": "benchmarks.grid", "finetune": "benchmarks.finetune", "report": "benchmarks.report",
            "speed": "benchmarks.speed", "scale": "benchmarks.scale"}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if not argv or argv[0] not in COMMANDS:
        print((f"unknown command {argv[0]!r}\n" if argv else "") + __doc__, file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[argv[0]])
    except ModuleNotFoundError as e:
        if e.name != COMMANDS[argv[0]]:
            raise
        raise FeatbenchError(f"`{argv[0]}` is not in this featbench yet ({e.name} is missing)") from None
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(run_cli(main))
