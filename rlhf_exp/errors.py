"""Errors a user can fix: reported as one line and exit code 2, never as a traceback."""


class UserError(Exception):
    """Bad input: a config value, a missing file, a dataset without the needed columns.

    The message is the whole report, so it names the bad value and what would be valid.
    """


class ConfigError(UserError):
    """A config key holds a value outside its type or range."""

    def __init__(self, key: str, value: object, valid: str) -> None:
        self.key, self.value, self.valid = key, value, valid
        super().__init__(f"{key}={value!r} is invalid: {valid}")


class NonFiniteError(RuntimeError):
    """A loss or reward became NaN or infinite; the message names the quantity and step."""


class Interrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint it can resume from."""

    def __init__(self, run_dir: object, step: int) -> None:
        self.run_dir, self.step = run_dir, step
        super().__init__(f"interrupted at step {step}; checkpoint saved in {run_dir}/checkpoints")
