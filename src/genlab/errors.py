"""The one exception type for input a user can fix.

Anything raised as GenlabError is shown as a single line: the CLI prints it and exits
with code 2, the server answers it as an OpenAI-style 400. Everything else is a bug.

Library messages name fields ("steps must be ..."), never command-line flags, and carry the
names in `fields`: the CLI writes them as its flags ("--steps must be ...", cli/__init__.py),
while Python and HTTP callers read the names they passed.
"""


class GenlabError(ValueError):
    """Bad input: the message says what was wrong and what is accepted; `fields` are the parameter
    names it mentions (or a phrase that starts with one, "layout 0"), for front ends to rename."""

    def __init__(self, message: str, *fields: str):
        super().__init__(message)
        self.fields = fields

    def renamed(self, name_of) -> str:
        """The message with each field it names (first mention) written as `name_of(field)`:
        the CLI passes its flags (steps -> --steps), the server its request fields (guidance -> guidance_scale)."""
        import re

        message = str(self)
        for phrase in self.fields:  # a field name, or a phrase that starts with one ("layout 0")
            name = phrase.split()[0]
            message = re.sub(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", name_of(name) + phrase[len(name):], message, count=1)
        return message


def check(condition: bool, message: str, *fields: str) -> None:
    """Raise GenlabError(message, *fields) unless condition holds: `check(steps >= 1, "steps must be >= 1", "steps")`."""
    if not condition:
        raise GenlabError(message, *fields)


def check_number(name: str, value, low: float, high: float | None = None, *, integer: bool = False,
                 above: bool = False) -> None:
    """Raise GenlabError unless `value` is a finite number (an int when `integer`) from `low` to `high`
    (None: no upper bound; `above`: strictly more than `low`). A bare `x >= 0` lets infinity through,
    so every numeric option of every front end is checked here.

        check_number("temperature", 0.7, 0, 100)     # ok
        check_number("n", 65, 1, 64, integer=True)   # GenlabError: n must be an integer between 1 and 64, got 65
    """
    import math
    import numbers

    kind = numbers.Integral if integer else numbers.Real
    ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if above else value >= low) and (high is None or value <= high)
    if not ok:
        what = "an integer" if integer else "a finite number"
        if above:
            span = f"above {low}" + ("" if high is None else f" and at most {high}")
        else:
            span = f"of at least {low}" if high is None else f"between {low} and {high}"
        raise GenlabError(f"{name} must be {what} {span}, got {value!r}", *_field(name))


def check_text(name: str, value: str) -> None:
    """Raise GenlabError unless `value` is valid Unicode text. Undecodable bytes reach Python as lone
    surrogates (argv and stdin use surrogateescape); tokenizers cannot encode them."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise GenlabError(f"{name} is not valid UTF-8 (an undecodable byte at character {e.start}); "
                          f"give text encoded as UTF-8", *_field(name)) from None


def _field(name: str) -> tuple[str, ...]:
    """`name` as a field a front end may rename, unless it is a phrase ("the prompt") or already a flag."""
    return (name,) if name.isidentifier() else ()
