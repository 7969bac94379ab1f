class BadInput(ValueError):
    """A request the model cannot answer as sent; the message names what was wrong.
    HTTP events answer it with 400, direct invocations raise it (errorType BadInput)."""


def string_list(inputs, whole: str, item: str) -> list[str]:
    """A request's "inputs" as a non-empty list of strings (one string becomes a list of
    one); BadInput naming what was sent otherwise."""
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        raise BadInput(f'"inputs" must be {whole}')
    for i, value in enumerate(inputs):
        if not isinstance(value, str):
            raise BadInput(f'"inputs"[{i}] is {type(value).__name__}, expected {item}')
    return inputs


class DeviceUnavailable(RuntimeError):
    """The model's device (a GPU, its driver or CUDA runtime) is not usable here."""
