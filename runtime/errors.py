class BadInput(ValueError):
    """A request the model cannot answer as sent; the message names what was wrong.
    HTTP events answer it with 400, direct invocations raise it (errorType BadInput)."""


class DeviceUnavailable(RuntimeError):
    """The model's device (a GPU, its driver or CUDA runtime) is not usable here."""
