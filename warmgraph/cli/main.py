"""The ``warmgraph`` entry point: the click group and the one-line error contract.

A user mistake (a bad flag, a missing file, a value that cannot work) prints one line on
stderr, ``warmgraph: error: ...``, and exits with code 2. Tracebacks are for bugs.
"""

from __future__ import annotations

import importlib
import signal
import sys
import threading
import warnings

import click

from warmgraph._version import __version__
from warmgraph.errors import WarmgraphError

# name -> (module, attribute). Imported when the command runs, so `generate` does not pay
# for the bucket and cache commands' imports at every start.
COMMANDS = {
    "buckets": ("warmgraph.cli.buckets", "buckets"),
    "cache": ("warmgraph.cli.cache", "cache"),
    "convert-gguf": ("warmgraph.cli.convert", "convert_gguf"),
    "generate": ("warmgraph.cli.engine", "generate"),
    "quant": ("warmgraph.cli.quant", "quant"),
    "warmup": ("warmgraph.cli.engine", "warmup"),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None,
                                                                             list[str]]:
        # `warmup --engine vllm` is another command (vLLM's arguments, not the engine options).
        if args and args[0] == "warmup":
            rest = args[1:]
            for i, arg in enumerate(rest):
                if arg == "--engine" and i + 1 < len(rest) and rest[i + 1] == "vllm":
                    rest = rest[:i] + rest[i + 2:]
                elif arg == "--engine=vllm":
                    rest = rest[:i] + rest[i + 1:]
                else:
                    continue
                from warmgraph.cli.vllm_warmup import vllm_warmup

                return "warmup", vllm_warmup, rest
        return super().resolve_command(ctx, args)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attribute = COMMANDS[cmd_name]
        command: click.Command = getattr(importlib.import_module(module), attribute)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="warmgraph")
def cli() -> None:
    """warmgraph: choose bucket shapes, compile one graph per bucket, keep graphs on disk."""



def quiet_torch_warnings() -> None:
    """torch 2.13's export prints a FutureWarning about its own pytree internals on every
    compile; it says nothing to a warmgraph user, so that one message is silenced."""
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every cleanup (temporary directories, locks) runs."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; exit 2 with one line on stderr for any user error, 130 on Ctrl-C, 143 on SIGTERM."""
    quiet_torch_warnings()
    if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
        signal.signal(signal.SIGTERM, _terminate)
    try:
        # Without standalone mode click returns a command's ctx.exit(code) instead of raising.
        code = cli.main(args=argv, prog_name="warmgraph", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, click.Abort) as exc:  # click turns Ctrl-C into Abort
        click.echo("\nwarmgraph: interrupted; nothing half-written is left (graphs finished so far stay in the "
                   "cache for the next run)", err=True)
        terminated = isinstance(exc, Terminated) or isinstance(exc.__cause__, Terminated)  # click wraps it in Abort
        sys.exit(143 if terminated else 130)
    except click.UsageError as exc:
        where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        click.echo(f"warmgraph: error: {exc.format_message()}{where}", err=True)
        sys.exit(2)
    except WarmgraphError as exc:
        click.echo(f"warmgraph: error: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:  # e.g. a plot or output path that cannot be written
        click.echo(f"warmgraph: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), err=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)
