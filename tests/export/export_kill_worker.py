"""``potstill ARGS`` that SIGKILLs itself right after the export folder OUT is renamed into place
(for test_merged's stopped-export test).

usage: python export_kill_worker.py OUT ARGS...
"""

import os
import signal
import sys
from pathlib import Path

from potstill.cli import main

out = Path(sys.argv[1]).resolve()
real_replace = os.replace


def replace(src, dst, *a, **kw):
    real_replace(src, dst, *a, **kw)
    if Path(dst).resolve() == out:
        os.kill(os.getpid(), signal.SIGKILL)


os.replace = replace
sys.argv = ["potstill", *sys.argv[2:]]
main()
