"""featbench's command lines: one grammar, `python -m PACKAGE [COMMAND] [OPTIONS]`, and one way to end:
an error is one line on stderr, never a traceback."""
import argparse
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Callable

from features.errors import FeatbenchError


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run_cli(main_fn, argv=None) -> int:
    """Run a CLI entry point: FeatbenchError → one line on stderr, exit 2; Ctrl-C → exit 130; stdout closed by
    the reader (`… | head`) → exit 141, quietly, as a tool that SIGPIPE ended.

    SIGTERM (`kill PID`, a scheduler stopping the job) is taken as Ctrl-C: finished work is kept."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return main_fn(argv)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # or Python's exit flush raises it again
        return 128 + signal.SIGPIPE
    except FeatbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; re-run the same command to resume", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def parse_size(text: str) -> int:
    """`8G`, `512M`, `1.5GiB`, `100000` (bytes) → bytes."""
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    try:
        size = int(float(t[:-1] if t[-1:] in units else t) * units[t[-1] if t[-1:] in units else ""])
    except (ValueError, OverflowError):
        size = 0
    if size <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive size (e.g. 8G, 512M, 1000000)")
    return size


@dataclass(frozen=True)
class Command:
    """A subcommand: its line in `--help`, what adds its arguments, and what runs it (returns the exit status)."""
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


class OneLineParser(argparse.ArgumentParser):
    """argparse with its usage errors on one line, as featbench's others (`error: …`, exit 2), not after the usage
    block; `--help` shows the usage."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


@dataclass(frozen=True)
class CommandLine:
    """`prog COMMAND [OPTIONS]` as argparse subcommands; the chosen one is `args.which`.

    With a `default`, a command line that starts with an option runs it (`python -m extract --backbone X`
    is `python -m extract embed --backbone X`); `aliases` spell a command as a leading flag. Only the
    chosen command's arguments are added, so a command can import its module when it runs."""
    prog: str
    description: str
    commands: dict[str, Command]
    default: str | None = None
    aliases: dict[str, str] = field(default_factory=dict)

    def parser(self, command: str | None = None) -> argparse.ArgumentParser:
        """The parser of every command line; `command`'s subparser gets that command's arguments."""
        p = OneLineParser(prog=self.prog, description=self.description, epilog=self._epilog(),
                          usage=f"%(prog)s {'[COMMAND]' if self.default else 'COMMAND'} [OPTIONS]",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
        sub = p.add_subparsers(prog=self.prog, help=argparse.SUPPRESS)  # listed by _epilog, one line each
        for name, c in self.commands.items():
            s = sub.add_parser(name, description=c.help, formatter_class=argparse.RawDescriptionHelpFormatter)
            s.set_defaults(which=name)
            if name == command:
                c.add_arguments(s)
        return p

    def _epilog(self) -> str:
        width = max(map(len, self.commands))
        lines = ["commands:"] + [f"  {n:<{width}}  {c.help}" + (" (the default)" if n == self.default else "")
                                 for n, c in self.commands.items()]
        lines += ["", f"`{self.prog} COMMAND --help` shows a command's options."]
        if self.default:
            lines.append(f"Without a COMMAND, `{self.default}` runs: `{self.prog} --OPTION …` is "
                         f"`{self.prog} {self.default} --OPTION …`.")
        lines += [f"`{self.prog} {flag}` is `{self.prog} {name}`." for flag, name in self.aliases.items()]
        return "\n".join(lines)

    def command(self, argv: list[str]) -> tuple[str | None, list[str]]:
        """(the command `argv` runs, None for the top-level help; `argv` with that command named first)."""
        first = argv[0] if argv else None
        flag, eq, value = (first or "").partition("=")
        if flag in self.aliases:
            return self.aliases[flag], [self.aliases[flag], *([value] if eq else []), *argv[1:]]
        if first in self.commands:
            return first, argv
        if first in ("-h", "--help"):
            return None, argv
        if self.default and (first is None or first.startswith("-")):
            return self.default, [self.default, *argv]
        choices = ", ".join(self.commands)
        if first is None or first.startswith("-"):
            raise FeatbenchError(f"no command: {self.prog} COMMAND, with COMMAND one of {choices} (see --help)")
        raise FeatbenchError(f"unknown command {first!r}: {self.prog} COMMAND, with COMMAND one of {choices}")

    def parse(self, argv=None) -> argparse.Namespace:
        command, argv = self.command(list(sys.argv[1:] if argv is None else argv))
        return self.parser(command).parse_args(argv)

    def main(self, argv=None) -> int:
        args = self.parse(argv)
        return self.commands[args.which].run(args)
