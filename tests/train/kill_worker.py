"""Run the trainer and SIGKILL this process during optimizer step ``kill_at`` (for test_checkpoint).

usage: python kill_worker.py MODEL_DIR OUT_DIR KILL_AT [OVERRIDES_JSON]
"""

import json
import os
import signal
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from test_checkpoint import run  # noqa: E402

torch.set_num_threads(1)
model_dir, out, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
calls = 0
real_step = torch.optim.AdamW.step


def step(self, *a, **kw):
    global calls
    calls += 1
    if calls == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: as if the machine died
    return real_step(self, *a, **kw)


torch.optim.AdamW.step = step
run(model_dir, out, **(json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}))
