"""The one exception type for problems a user can fix (bad name, bad file, missing package, offline)."""


class UserError(Exception):
    """A problem with what the user asked for. The message names the problem and the fix.

    The CLI prints it as one line and exits with status 2; library callers get a normal exception.
    """
