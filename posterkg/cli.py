"""The ``posterkg`` command line.

Each stage lives in ``posterkg/commands/<stage>.py`` and exposes click commands; they are imported
only when invoked, so ``posterkg --help`` stays fast and a stage with heavy imports (torch, vLLM)
costs nothing to the others.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings

import click

from posterkg import __version__
from posterkg.clikit import Env, common_options
from posterkg.errors import PosterkgError

# command name -> (module, attribute, one-line help shown by `posterkg --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "download": ("posterkg.commands.ingest", "download", "Download a MovieLens release or model weights (needs internet)."),
    "ingest": ("posterkg.commands.ingest", "ingest", "Load MovieLens and posters into the database."),
    "posters": ("posterkg.commands.ingest", "posters", "Fetch or re-scan poster images."),
    "split": ("posterkg.commands.split", "split", "Split ratings into train/valid/test."),
    "info": ("posterkg.commands.info", "info", "Show table counts, poster coverage and splits."),
    "tag": ("posterkg.commands.tag", "tag", "Tag posters with visual knowledge points."),
    "embed": ("posterkg.commands.embed", "embed", "Embed posters and movie texts into dense features."),
    "schema": ("posterkg.commands.schema", "schema", "Discover, freeze and project the concept vocabulary."),
    "graph": ("posterkg.commands.graph", "graph", "Build, export and describe the knowledge graphs."),
    "semantic-ids": ("posterkg.commands.semantic", "semantic_ids", "RQ-VAE semantic IDs of the movies (build, show, assign)."),
    "train": ("posterkg.commands.train", "train", "Train the GNN recommender or a baseline."),
    "evaluate": ("posterkg.commands.train", "evaluate", "Evaluate trained models on the fixed protocol."),
    "recommend": ("posterkg.commands.train", "recommend", "Top-k recommendations for users."),
    "explain": ("posterkg.commands.explain", "explain", "Explain a recommendation by concept paths."),
    "profile": ("posterkg.commands.explain", "profile", "A user's visual profile, long vs short term."),
    "similar": ("posterkg.commands.explain", "similar", "Movies similar to a movie, with shared concepts."),
    "report": ("posterkg.commands.explain", "report", "Write a self-contained HTML report."),
    "interests": ("posterkg.commands.interests", "interests", "Extract users' interests onto the vocabulary (LLM or stats)."),
    "run": ("posterkg.commands.run", "run", "Run every stage end to end from a config."),
    "demo": ("posterkg.commands.run", "demo", "Self-check on generated data: no network, no GPU."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [n for n in COMMANDS if self._available(n)]

    def _available(self, name: str) -> bool:
        mod = COMMANDS[name][0]
        return importlib.util.find_spec(mod) is not None

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS or not self._available(name):
            return None
        mod, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(mod), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(n, COMMANDS[n][2]) for n in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="posterkg")
@common_options
@click.pass_context
def cli(ctx: click.Context) -> None:
    """posterkg turns movie posters into a visual knowledge graph and recommends movies with it.

    Every stage reads and writes one DuckDB file, so any stage can be re-run alone.
    A typical session on MovieLens 1M:

    \b
      posterkg ingest movielens ml-1m --posters ml-1m/posters
      posterkg split --scheme temporal
      posterkg tag --backend pixels          # or vllm / hf / openai on a GPU
      posterkg schema discover --model minilm   # minilm ships with posterkg; other weights:
      posterkg schema freeze && posterkg schema project   # `posterkg download model ID` once
      posterkg graph build
      posterkg train && posterkg evaluate
      posterkg recommend --user 42 -k 10 && posterkg explain --user 42 --movie 1196

    `posterkg run --config posterkg.toml` runs all of it, skipping stages whose inputs did not change.
    """
    ctx.ensure_object(Env)


def _command_name(argv: list[str]) -> str | None:
    """The sub-command in ``argv`` (skipping the group's options and their values)."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--db", "--config"):
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def no_network_unless_asked(argv: list[str]) -> None:
    """No hub traffic unless asked: every command but ``download`` runs with the Hugging Face
    hub offline (weights load from the local cache only); ``HF_HUB_OFFLINE=0`` set by the user
    is respected. Must run before huggingface_hub is imported (it reads these at import)."""
    if _command_name(argv) != "download":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _is_damaged_database(exc: BaseException) -> bool:
    return type(exc).__module__.lstrip("_") == "duckdb" and type(exc).__name__ in (
        "IOException", "SerializationException")


def main() -> None:
    # torch's beta notices for the sparse CSR adjacencies the GNN uses: noise for a CLI user.
    warnings.filterwarnings("ignore", message=r"Sparse (CSR tensor support is in beta|invariant checks)")
    no_network_unless_asked(sys.argv[1:])
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except PosterkgError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except Exception as exc:
        if not _is_damaged_database(exc):
            raise
        # a database file damaged after it was opened (a read past its end ...): one line
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        click.echo(f"error: the database file is damaged or truncated: {first}", err=True)
        sys.exit(1)
