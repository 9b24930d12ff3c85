"""The one exception type for user mistakes.

Anything a user can fix (a bad key, a missing file, a corrupt archive) is raised as `UserError`
with a one-line message naming the file, key or value and what would be valid. The CLI turns it
into that line on stderr and a non-zero exit, without a traceback; every other exception is a bug
and keeps its traceback.
"""


class UserError(Exception):
    """A mistake the user can fix; the message is the whole explanation, on one line."""
