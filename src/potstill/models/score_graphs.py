"""Label scoring on a GPU replayed from CUDA graphs.

Compiled, the packed scoring forward (``models.packing``) still launches each of its ~500 kernels
(SmolLM2-135M) from Python, so on a GPU a small classifier waits on its host: a served
SmolLM2-135M-shaped student took 10.1-10.5 ms per input at batch 1 and 0.66-0.71 ms per input in
batches of 32 on an H200 (``benchmarks/fused_scoring.json``), for about a millisecond of kernels.

``ScoreGraphs`` pads a batch to a bucket: rows to a power of two, the longest query to one of
``LENGTHS`` (raised so that prefix plus query is a multiple of 8, as ``packing.layout`` aligns
keys). The bucket's rows x length slots are one packed row whose every slot is a token: a query's
own, then padding, which no real token sees (a slot sees only its own row's earlier slots and
the prefix), so each query's hidden states are those of the packed forward. The decoder's forward
over that layout, the gather of each row's last hidden state and the sum over its real tokens
(the embedding's) are recorded once per (prefix, bucket) as one CUDA graph; a batch copies its
token ids, ends and token mask into the graph's inputs and replays it. The label rows of the head
(``scoring.apply_head``) run after it. Under a teacher's stacked shot orders (``scoring.stack_prefixes``)
the bucket holds one block of rows per order, each block reading its own prefix row: on an H200 a
Gemma-3-270M-shaped teacher's three orders scored in 4.50 ms per input at batch 1 against 11.10 ms
packed (``benchmarks/teacher_graphs.json``). All graphs share one memory pool: replays never overlap,
and each graph's outputs are read before the next replay. On a CPU the same forward runs without
recording (what the CPU tests check).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from potstill.models import packing
from potstill.models.static_decode import bucket_rows, record_graph

# Query length buckets (tokens after the cached prefix); a longer query runs the packed path.
LENGTHS = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512)
MAX_SLOTS = 16384  # rows (every prefix block) x length of the largest bucket (its activations sit in the pool)

log = logging.getLogger(__name__)


def bucket(rows: int, longest: int, prefix_length: int, stacks: int = 1) -> tuple[int, int] | None:
    """(rows, length) of the graph that holds ``rows`` queries of up to ``longest`` tokens after a
    prefix of ``prefix_length``, under each of ``stacks`` stacked prefixes (the graph's rows are
    ``stacks`` blocks of ``rows``); None where none does (the packed path runs)."""
    length = next((n for n in LENGTHS if n >= longest), None)
    if length is None:
        return None
    length += (-(prefix_length + length)) % 8
    rows = bucket_rows(rows)
    return (rows, length) if stacks * rows * length <= MAX_SLOTS else None


class ScoreGraphs:
    """The recorded scoring forwards of one model, by (prefix, rows, length)."""

    def __init__(self, model: Any):
        self.model = model
        self.device = next(model.parameters()).device
        self._graphs: dict[tuple, _Graph] = {}
        self.pool = torch.cuda.graph_pool_handle() if self.device.type == "cuda" else None
        # Set where recording failed (a model whose forward synchronises with the host, memory, ...):
        # from then on every batch runs the packed path, and the reason was logged once.
        self.off: str | None = None

    def __len__(self) -> int:
        return len(self._graphs)

    def run(self, queries: list[list[int]], prefix: Any, pad: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(last hidden state of each query (B, H), sum of the last hidden states over its own tokens
        (B, H) in float32), on the device; None where no bucket holds the queries, the model does not
        pack (``packing.supported``) or recording failed (``off``). With stacked prefixes (a teacher's
        shot orders, ``prefix.rows`` > 1) the queries are prefix-major, as ``packing.layout`` takes
        them: each prefix row's block of the bucket holds that row's queries. A batch with more rows
        than ``MAX_SLOTS`` allows at its length replays in parts of the largest bucket that fits
        (32 articles of ~170 tokens under a teacher's 3 shot orders: two parts of 16 per order)."""
        stacks = prefix.rows if prefix is not None else 1
        if self.off is not None or len(queries) % stacks:
            return None
        P = prefix.length if prefix is not None else 0
        n, longest = len(queries) // stacks, max(len(q) for q in queries)
        if bucket(n, longest, P, stacks) is not None:
            return self._replay(queries, prefix, pad)
        most = bucket(1, longest, P, stacks)
        if most is None:  # the queries are too long for any bucket
            return None
        per = 1 << ((MAX_SLOTS // (stacks * most[1])).bit_length() - 1)  # rows per part: a power of two that fits
        lasts, totals = [], []
        for start in range(0, n, per):
            part = [queries[r * n + i] for r in range(stacks) for i in range(start, min(start + per, n))]
            got = self._replay(part, prefix, pad)
            if got is None:
                return None
            # The next replay writes over this one's outputs (one memory pool): keep a copy, per order.
            lasts.append(got[0].view(stacks, -1, got[0].shape[-1]).clone())
            totals.append(got[1].view(stacks, -1, got[1].shape[-1]).clone())
        return torch.cat(lasts, 1).flatten(0, 1), torch.cat(totals, 1).flatten(0, 1)

    def _replay(self, queries: list[list[int]], prefix: Any, pad: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``run`` for queries that one bucket holds."""
        stacks = prefix.rows if prefix is not None else 1
        P = prefix.length if prefix is not None else 0
        shape = bucket(len(queries) // stacks, max(len(q) for q in queries), P, stacks)
        if shape is None or not packing.supported(self.model, P + shape[1]):
            return None
        key = (id(prefix), *shape)
        if key not in self._graphs:
            try:
                self._graphs[key] = _Graph(self, shape, prefix, pad)
            except Exception as e:  # noqa: BLE001 - whatever stops a recording, the packed path still scores
                self.off = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                log.warning("label scoring from CUDA graphs is off for this model (%s); batches run packed", self.off)
                return None
        return self._graphs[key].replay(queries)


class _Graph:
    """One bucket's inputs, outputs and (on CUDA) recorded forward."""

    def __init__(self, owner: ScoreGraphs, shape: tuple[int, int], prefix: Any, pad: int):
        from potstill.models.scoring import decoder

        self.owner, (self.block, self.length), self.pad = owner, shape, pad
        self.stacks = prefix.rows if prefix is not None else 1
        self.rows = self.stacks * self.block  # prefix row r's queries sit in rows r * block ...
        model, dev = owner.model, owner.device
        self.prefix = prefix  # held: the graph reads its keys where they are
        self.keys = [(layer.keys, layer.values) for layer in prefix.past.layers] if prefix is not None else None
        P = prefix.length if prefix is not None else 0
        self.lay = packing.layout([self.length] * self.rows, P, model.dtype, dev, packing.windows(model, self.keys),
                                  self.stacks)
        self.body = decoder(model)
        self.ids = torch.full((1, self.rows * self.length), pad, dtype=torch.long, device=dev)
        self.ends = torch.zeros(self.rows, dtype=torch.long, device=dev)  # each row's last own slot
        self.real = torch.zeros(self.rows, self.length, 1, dtype=torch.float32, device=dev)  # 1: a query's own token
        self.last: torch.Tensor | None = None
        self.total: torch.Tensor | None = None
        self.graph = record_graph(self._forward, dev, owner.pool) if dev.type == "cuda" else None

    def _forward(self) -> None:
        hidden = packing.run(self.body, self.owner.model, self.ids, self.lay, self.keys)  # (rows * length, H)
        self.last = hidden[self.ends + torch.arange(self.rows, device=hidden.device) * self.length]
        self.total = (hidden.view(self.rows, self.length, -1).float() * self.real).sum(1)

    def replay(self, queries: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.full((self.rows, self.length), self.pad, dtype=torch.long)
        real = torch.zeros(self.rows, self.length, 1)
        ends = torch.zeros(self.rows, dtype=torch.long)
        n = len(queries) // self.stacks
        rows = [r * self.block + i for r in range(self.stacks) for i in range(n)]  # each query's row, in order
        for row, q in zip(rows, queries):
            ids[row, : len(q)] = torch.tensor(q)
            real[row, : len(q)] = 1
            ends[row] = len(q) - 1
        self.ids.copy_(ids.view(1, -1))
        self.real.copy_(real)
        self.ends.copy_(ends)
        if self.graph is not None:
            self.graph.replay()
        else:
            self._forward()
        if rows[-1] == len(rows) - 1:  # the queries fill the first rows (one prefix, or full blocks)
            return self.last[: len(rows)], self.total[: len(rows)]
        pick = torch.tensor(rows, device=self.last.device)
        return self.last[pick], self.total[pick]
