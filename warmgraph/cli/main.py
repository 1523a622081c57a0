"""The ``warmgraph`` entry point: the click group and the one-line error contract.

A user mistake (a bad flag, a missing file, a value that cannot work) prints one line on
stderr, ``warmgraph: error: ...``, and exits with code 2. Tracebacks are for bugs.
"""

from __future__ import annotations

import sys
import warnings

import click

from warmgraph._version import __version__
from warmgraph.cli.buckets import buckets
from warmgraph.cli.cache import cache
from warmgraph.cli.convert import convert_gguf
from warmgraph.cli.engine import generate, warmup
from warmgraph.errors import WarmgraphError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="warmgraph")
def cli() -> None:
    """warmgraph: choose bucket shapes, compile one graph per bucket, keep graphs on disk."""


cli.add_command(buckets)


def quiet_torch_warnings() -> None:
    """torch 2.13's export prints a FutureWarning about its own pytree internals on every
    compile; it says nothing to a warmgraph user, so that one message is silenced."""
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
cli.add_command(cache)
cli.add_command(warmup)
cli.add_command(generate)
cli.add_command(convert_gguf)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; exit 2 with one line on stderr for any user error."""
    quiet_torch_warnings()
    try:
        # Without standalone mode click returns a command's ctx.exit(code) instead of raising.
        code = cli.main(args=argv, prog_name="warmgraph", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, click.Abort):  # click turns Ctrl-C into Abort
        click.echo("\nwarmgraph: interrupted; graphs finished so far are in the cache for the next run", err=True)
        sys.exit(130)
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
