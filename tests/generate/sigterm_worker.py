"""``potstill ARGS`` that sends itself SIGTERM from inside the API teacher's 20th request, a task step
of the running event loop: where a ``kill`` or ``docker stop`` most often lands during generate
(for test_generate_sigterm).

usage: python sigterm_worker.py ARGS...
"""

import os
import signal
import sys

from potstill.cli import main
from potstill.teachers.api import engine

real, calls = engine.send, []


async def send(*a, **kw):
    calls.append(1)
    if len(calls) == 20:
        os.kill(os.getpid(), signal.SIGTERM)  # handled at the next bytecode: inside this task's step
    return await real(*a, **kw)


engine.send = send
sys.argv = ["potstill", *sys.argv[1:]]
main()
