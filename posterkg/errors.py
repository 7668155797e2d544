"""Exceptions with messages meant for people: the CLI prints them without a traceback."""


class PosterkgError(Exception):
    """Base class of every error the CLI reports as a clean one-line message."""


class ConfigError(PosterkgError):
    """The configuration file or a flag is wrong."""


class DatabaseLockedError(PosterkgError):
    """Another process holds the DuckDB file open for writing."""


class InputError(PosterkgError):
    """Input data (a MovieLens folder, a poster, a table) is missing or malformed."""
