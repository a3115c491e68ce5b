"""The one exception type for bad user input (files, configs, flags).

The CLI turns it into a one-line message and exit status 2; anything else is a bug.
"""


class UserInputError(ValueError):
    """Bad input from the user; the message names the file, line or key and what is wrong."""
