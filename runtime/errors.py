class BadInput(ValueError):
    """A request the model cannot answer as sent; the message names what was wrong.
    HTTP events answer it with 400, direct invocations raise it (errorType BadInput)."""
