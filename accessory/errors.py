"""Errors caused by the user's input, reported as one line without a traceback."""


class AccessoryError(Exception):
    """Bad input (a path, a config key, a data record): the message names the culprit and the fix."""
