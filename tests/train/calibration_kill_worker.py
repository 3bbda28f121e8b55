"""``potstill ARGS`` that sends itself ``SIG`` when train's int8 calibration starts, after the last
optimiser step and the student's save (for test_stopped_after_training).

usage: python calibration_kill_worker.py SIG ARGS...   (SIG: INT for Ctrl-C, KILL as if the machine died)
"""

import os
import signal
import sys

from potstill.cli import main
from potstill.engines import calibration

sig = getattr(signal, "SIG" + sys.argv[1])


def calibrate(*a, **kw):
    os.kill(os.getpid(), sig)
    return real(*a, **kw)


real, calibration.calibrate = calibration.calibrate, calibrate
sys.argv = ["potstill", *sys.argv[2:]]
main()
