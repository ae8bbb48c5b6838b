"""End-to-end runs behind the command-line tools (library code: keyword arguments in, results out)."""
