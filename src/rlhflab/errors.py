"""The one exception type for user mistakes: the CLI prints its message as one line, never a traceback."""


class UserError(Exception):
    """A problem the user can fix (bad config value, missing file, ...). The message names the bad value."""
