"""Errors that trainwire raises on purpose."""


class ConfigError(ValueError):
    """Bad input, found before any work starts.

    The message is one line that names the key (or file) and the offending value, so the CLI
    can print it as is, without a traceback.
    """
