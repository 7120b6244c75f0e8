"""Text shared by error messages."""


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message (torch's and Pyro's run to pages)."""
    return next((ln.strip() for ln in str(err).splitlines() if ln.strip()), "")
