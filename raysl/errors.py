"""The one error type the CLI turns into a clear message (no traceback); what an out-of-memory kill asks of the user."""

import re


class UserError(Exception):
    """A problem with the user's input: a file, a config field, a dataset.

    The message must name what is wrong and where (file path, config field), and say how to fix it
    where that is known. The CLI prints it and exits non-zero without a traceback.
    """


MEMORY_USE = re.compile(r"Memory on the node .*? was (\d[\d.]*\s*[KMGT]?B)(?: used)? / (\d[\d.]*\s*[KMGT]?B)")
OUT_OF_MEMORY = "killed by Ray's out-of-memory monitor"


def out_of_memory(text: str) -> str | None:
    """When `text` (a Ray error) says the memory monitor killed the process: that, how full the node was, and what
    to change, in one line; else None."""
    if not any(sign in text for sign in ("OutOfMemoryError", "low on memory", "memory monitor")):
        return None
    used = MEMORY_USE.search(text)
    where = f" (the node used {used[1]} of {used[2]})" if used else ""
    return (f"{OUT_OF_MEMORY}{where}: lower batch_size or evaluation.batch_size, use fewer resources.data_actors, "
            "or give the nodes more memory")
