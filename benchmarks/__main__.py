"""`python -m benchmarks`: featbench's runs turned into the reports users come for."""
import sys
from importlib import import_module

from features.cli import Command, CommandLine, run_cli


def lazy(help: str, module: str) -> Command:
    """A command whose module (its `add_arguments(parser)` and `main(args)`) is imported only when it runs:
    `--help` imports none of them."""
    return Command(help, lambda p: import_module(module).add_arguments(p),
                   lambda args: import_module(module).main(args))


CLI = CommandLine("python -m benchmarks", __doc__, {
    "run": lazy("backbones × heads on one dataset (+ fine-tunes), then the report", "benchmarks.grid"),
    "finetune": lazy("a fine-tuned baseline on the heads' split", "benchmarks.finetune"),
    "report": lazy("rebuild a report from existing metrics files", "benchmarks.report"),
    "curve": lazy("label-efficiency curves: frozen heads on nested train subsets of 1, 2, 4, … images per class",
                  "benchmarks.curve"),
    "speed": lazy("extraction images/second against the seed notebooks' pipeline", "benchmarks.speed"),
    "precision": lazy("what --precision bf16/int8 costs downstream: cosine, test and out-of-fold logreg vs fp32",
                      "benchmarks.precision"),
    "audit": lazy("classify audit: its time on a real store (minus the map) and peak RSS on large synthetic stores",
                  "benchmarks.audit"),
    "scale": lazy("logreg out of core on a large synthetic store: time and peak RSS", "benchmarks.scale"),
    "gpu-check": lazy("the GPU acceptance check: PASS/FAIL per line, minutes, offline", "benchmarks.gpucheck"),
})
main = CLI.main


if __name__ == "__main__":
    sys.exit(run_cli(main))
