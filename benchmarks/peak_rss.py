"""Peak resident memory of a featbench command (`python -m MODULE …`) run in a child process."""
import subprocess
import sys

PROBE = """import resource, runpy, sys
sys.argv = sys.argv[1:]  # [module, args…]: what `python -m module args…` would see
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as e:
    code = e.code
try:  # this process's own high-water mark: ru_maxrss also counts the parent's pages from before exec
    own = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
except OSError:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("PEAK_RSS_KB", own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def run_measured(module: str, args: list) -> tuple[subprocess.CompletedProcess, float, float]:
    """`python -m MODULE ARGS` in a child: (the finished run, its peak RSS in MiB, its own children's,
    e.g. extraction workers). A failed run ends the benchmark with the command's error output."""
    run = subprocess.run([sys.executable, "-c", PROBE, module, *map(str, args)], capture_output=True, text=True)
    stderr, _, peaks = run.stderr.rpartition("PEAK_RSS_KB")
    if run.returncode or not peaks:
        raise SystemExit(f"python -m {module} failed:\n{run.stderr}")
    run.stderr = stderr
    own_kb, children_kb = map(int, peaks.split())
    return run, own_kb / 1024, children_kb / 1024
