"""The embedded Ray session keeps Ray's messages that ask nothing of the user out of the sweep's output."""

from __future__ import annotations

import logging
import types

from raysl.ray_glue.session import _quiet_raylet_noise, _TokenAuthOnByDefault

NOISE = ("WARNING: 12 PYTHON worker processes have been started on node: abc with address: 10.0.0.1, which is 6x "
         "the maximum expected startup concurrency (2).")


def test_the_raylets_worker_start_warning_is_dropped_and_everything_else_printed():
    printed = []
    module = types.SimpleNamespace(print_to_stdstream=lambda data, ignore_prefix: printed.append(data))
    original = _quiet_raylet_noise(module)
    module.print_to_stdstream({"lines": [NOISE], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    assert printed == []
    module.print_to_stdstream({"lines": [NOISE, "raylet: out of memory, killed worker 7"], "pid": "raylet",
                               "is_err": False}, ignore_prefix=False)
    module.print_to_stdstream({"lines": ["[trial] epoch 1/3"], "pid": 4242, "is_err": False}, ignore_prefix=False)
    assert [data["lines"] for data in printed] == [["raylet: out of memory, killed worker 7"], ["[trial] epoch 1/3"]]
    module.print_to_stdstream = original


def test_only_the_token_auth_on_notice_is_dropped():
    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("ray", logging.WARNING, __file__, 1, message, (), None)

    quiet = _TokenAuthOnByDefault()
    assert not quiet.filter(record("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled"))
    assert quiet.filter(record("Token authentication is disabled for this Ray cluster. Anyone with network access"))
