"""The one exception type for input a user can fix.

Anything raised as GenlabError is shown as a single line: the CLI prints it and exits
with code 2, the server answers it as an OpenAI-style 400. Everything else is a bug.
"""


class GenlabError(ValueError):
    """Bad input: the message says what was wrong and what is accepted."""


def check(condition: bool, message: str) -> None:
    """Raise GenlabError(message) unless condition holds: `check(steps >= 1, "steps must be >= 1")`."""
    if not condition:
        raise GenlabError(message)
