"""Range checks for the typed configs: a config checks its own fields, and the CLI names the option the user typed.

ConfigRangeError("resolution", "must be in [32, 1024]")  ->  "--resolution must be in [32, 1024], got 8"
"""

from __future__ import annotations


class ConfigRangeError(ValueError):
    """A config field out of its range; ``field`` is the dataclass field, ``requirement`` what it must be."""

    def __init__(self, *, field: str, requirement: str, value: object) -> None:
        self.field, self.requirement, self.value = field, requirement, value
        super().__init__(f"{field} {requirement}, got {value}")

    def for_option(self, option: str) -> str:
        """The message with the command-line option in place of the field."""
        return f"{option} {self.requirement}, got {self.value}"


def check_ranges(config: object, checks: tuple[tuple[str, bool, str], ...]) -> None:
    """Raise ConfigRangeError for the first (field, bad, requirement) whose ``bad`` is True. Write each ``bad`` as
    ``not (in range)`` so that NaN is refused too."""
    for field, bad, requirement in checks:
        if bad:
            raise ConfigRangeError(field=field, requirement=requirement, value=getattr(config, field))
