"""The one exception type the CLI turns into a clean one-line error and exit code 2, and how its
messages quote what the user gave."""


class UserError(Exception):
    """Bad input from the user: the message names what was wrong and what is allowed."""


class Refusal(UserError):
    """The report declines to give verdicts over what the store holds (arms not trained alike): a
    state of the sweep, which a tracker shows as such, rather than a mistake in the command."""


def shown(value: object, width: int = 80) -> str:
    """A user's value as an error message quotes it: at most `width` characters, cut with '...'."""
    text = str(value)
    return text if len(text) <= width else text[:width - 3] + "..."
