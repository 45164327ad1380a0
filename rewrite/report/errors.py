"""The report's one error: what it cannot read or write, said so that the user can act on it."""


class ReportError(ValueError):
    pass
