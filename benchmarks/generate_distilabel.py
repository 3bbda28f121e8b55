"""The throughput benchmark's workload through distilabel (run by benchmarks/generate.py in its own venv).

usage: generate_distilabel.py BASE_URL TEXTS_JSON CONCURRENCY  -> prints {"req_per_s", "seconds", ...}
Concurrency is distilabel's ``input_batch_size``: an AsyncLLM sends one batch's requests at once.
The time covers ``pipeline.run`` whole (its worker processes included), as a user would wait.
"""

import json
import sys
import time

from distilabel.models import OpenAILLM
from distilabel.pipeline import Pipeline
from distilabel.steps import LoadDataFromDicts
from distilabel.steps.tasks import TextGeneration

base_url, path, conc = sys.argv[1], sys.argv[2], int(sys.argv[3])
texts = json.load(open(path))
with Pipeline(name="potstill-bench") as pipe:
    load = LoadDataFromDicts(data=[{"instruction": t} for t in texts], batch_size=conc)
    gen = TextGeneration(llm=OpenAILLM(model="gpt-4o-mini", base_url=base_url, api_key="sk-bench", max_retries=5,
                                       generation_kwargs={"max_new_tokens": 4, "temperature": 0.0}),
                         system_prompt="Topic?", input_batch_size=conc)
    load >> gen
t0 = time.perf_counter()
ds = pipe.run(use_cache=False)
dt = time.perf_counter() - t0
rows = ds["default"]["train"]
n_ok = sum(1 for r in rows if r.get("generation"))
import distilabel

print(json.dumps({"req_per_s": len(texts) / dt, "seconds": dt, "n": len(texts), "answered": n_ok,
                  "distilabel": distilabel.__version__}))
