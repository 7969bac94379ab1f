"""Typed, user-facing errors.

Every failure a user can cause or fix is an ``EdgebundleError``: it says what went wrong,
where (a file, a model, a step) and what to do. The CLI prints ``str(err)`` without a
traceback (``--debug`` shows it) and exits with ``err.exit_code``.
"""
from __future__ import annotations


class EdgebundleError(Exception):
    exit_code = 1

    def __init__(self, what: str, *, where: str | None = None, hint: str | None = None):
        self.what = what
        self.where = where
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"error: {self.what}"]
        if self.where:
            lines.append(f"  where: {self.where}")
        if self.hint:
            lines.append(f"  what to do: {self.hint}")
        return "\n".join(lines)


class ModelSourceError(EdgebundleError):
    """The model directory or hub id cannot be read."""


class UnsupportedModelError(EdgebundleError):
    """The architecture, task or an operator is not supported."""


class CompileError(EdgebundleError):
    """torch.export, the Relax import or TVM compilation failed."""


class ValidationError(EdgebundleError):
    """The compiled module disagrees with PyTorch."""


class BundleError(EdgebundleError):
    """A bundle cannot be produced or breaks a platform limit."""


class ToolMissingError(EdgebundleError):
    """An external tool (cross compiler, debootstrap, pip) is missing."""


class InvokeError(EdgebundleError):
    """Running a bundle locally failed outside of the handler itself."""


class DeployError(EdgebundleError):
    """Deploying to AWS, or invoking what was deployed, failed (or was refused before it began)."""
