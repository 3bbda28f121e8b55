"""Greedy decoding under JSON Schemas, a token at a time: each step keeps the most likely token whose
text continues a JSON document the row's schema can still accept (``models.json_constraint``), or,
for a row guided by ``{REGEX: pattern}`` (vLLM's ``guided_regex``, and ``guided_choice`` as the
alternation of its strings), a text the pattern can still match whole (``RegexPrefix``), or for one
guided by ``{GRAMMAR: text}`` (vLLM's ``guided_grammar``), a text the grammar can still derive
whole (``models.grammar_constraint.GrammarPrefix``).

``JsonSchemaLogits`` is the ``model.generate`` logits processor (and the guide of greedy decoding on
static caches, ``static_decode.greedy``, through ``pick`` and ``choose``): for each row it tries the top
candidates in order (32, then 1,024, then the one-character tokens by logit), keeps the first whose
text the prefix accepts, and sets every other logit to -inf; once the document is complete it keeps
only an end token. A row none of whose candidates fits (a choice that needs a character no token
writes alone) is left as the model wants it, and its answer then fails validation.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from potstill.models.grammar_constraint import GRAMMAR, GrammarPrefix
from potstill.models.json_constraint import WS, JsonPrefix
from potstill.models.regex_constraint import REGEX, RegexPrefix

Prefix = JsonPrefix | RegexPrefix | GrammarPrefix  # what reads a row's answer under its guide


def text_prefix(spec: dict) -> Prefix:
    """The prefix reader of a row's guide: a regular expression's, a grammar's or a JSON Schema's."""
    pattern = spec.get(REGEX) if isinstance(spec, dict) else None
    if isinstance(pattern, str):
        return RegexPrefix(pattern)
    grammar = spec.get(GRAMMAR) if isinstance(spec, dict) else None
    return GrammarPrefix(grammar) if isinstance(grammar, str) else JsonPrefix(spec)


def native_decode(tok: Any) -> Any:
    """The ``tokenizers`` library's own ``decode`` behind a fast tokenizer whose class changes
    neither ``decode`` nor ``_decode``: there transformers' decode (without clean-up) is that call
    after converting the ids (about 10 us of its 12 for an 8-token window, which the guide decodes
    a few times per row and step). None for any other tokenizer, which keeps its own decode."""
    from transformers import PreTrainedTokenizerFast
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    cls = type(tok)
    if isinstance(tok, PreTrainedTokenizerFast) and cls.decode is PreTrainedTokenizerBase.decode \
            and cls._decode is PreTrainedTokenizerFast._decode:
        return tok._tokenizer.decode
    return None


class JsonSchemaLogits:
    """``model.generate``'s logits processor for greedy decoding under a JSON Schema (the module
    docstring). ``start``: the column where each row's answer begins (the padded prompt's width).
    ``schema``: one for every row, or a list with each row's (None: that row decodes unguided)."""

    WINDOW = 8  # tokens of the answer decoded with each candidate: enough for a character or a leading space

    def __init__(self, tokenizer: Any, schema: dict | Sequence[dict | None], start: int, ends: Sequence[int],
                 tries: Sequence[int] = (32, 1024)):
        self.tok, self.start = tokenizer, start
        self.schemas: Sequence[dict | None] | None = None if isinstance(schema, dict) else list(schema)
        self.schema = schema if isinstance(schema, dict) else None
        self.ends = [int(e) for e in ends]
        self._ends = set(self.ends)
        self.tries = tries
        self.rows: dict[int, tuple[list[int], str, Prefix]] = {}
        self._chars: list[int] | None = None
        self._native = native_decode(tokenizer)
        # Per row, the token ``pick`` kept last (the answer's length before it, the token, its text,
        # the state that read it): the next step's ``_state`` takes them instead of decoding and
        # reading the token again.
        self._kept: dict[int, tuple[int, int, str, Prefix]] = {}

    def _char_tokens(self) -> list[int]:
        """Tokens that are one printable ASCII character or one whitespace each: the last resort,
        where none of the likely tokens fits, since some such character continues any prefix
        (a quote, a brace, a digit, a key's next letter)."""
        if self._chars is None:
            ids = set()
            for c in [chr(i) for i in range(32, 127)] + list(WS):
                enc = self.tok.encode(c, add_special_tokens=False)
                if len(enc) == 1 and self._decode(enc) == c:
                    ids.add(enc[0])
            self._chars = sorted(ids)
        return self._chars

    def _decode(self, ids: list[int]) -> str:
        if self._native is not None:
            return self._native(ids, skip_special_tokens=False)
        return self.tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _delta(self, ids: list[int], base: str, t: int) -> str | None:
        """The text token ``t`` adds after ``ids``, whose last ``WINDOW`` tokens decode to ``base``
        (a decode of the window, not of the whole answer, per candidate tried); None where the
        window's text does not stay a prefix (a token finishing a character begun before it)."""
        now = self._decode(ids[-self.WINDOW:] + [t])
        return now[len(base):] if now.startswith(base) else None

    def _schema(self, r: int) -> dict | None:
        return self.schema if self.schemas is None else self.schemas[r]

    def _state(self, r: int, gen: list[int]) -> tuple[str, Prefix] | None:
        """The decoded answer so far and its prefix state (None where it left the grammar)."""
        ids, text, state = self.rows.get(r, ([], "", text_prefix(self._schema(r))))
        if gen[: len(ids)] != ids:
            ids, text, state = [], "", text_prefix(self._schema(r))
        kept = self._kept.pop(r, None)
        if kept is not None and len(gen) == len(ids) + 1 and kept[:2] == (len(ids), gen[-1]):
            ids, text, state = list(gen), text + kept[2], kept[3]  # pick read this token already
        elif len(gen) > len(ids):
            if len(gen) == len(ids) + 1:  # the usual step: one token more than last time
                delta = self._delta(ids, self._decode(ids[-self.WINDOW:]), gen[-1])
                now = None if delta is None else text + delta
            else:
                now = self._decode(gen)
            if now is None or not now.startswith(text) or not state.feed(now[len(text):]):
                return None
            ids, text = list(gen), now
        self.rows[r] = (ids, text, state)
        return text, state

    def _fits(self, gen: list[int], state: Prefix, base: str, t: int) -> bool:
        """Whether token ``t`` after ``gen`` (whose window decodes to ``base``) keeps the answer a
        start of an acceptable document."""
        if t in self._ends:
            return state.can_end()
        return self._read(gen, state, base, t) is not None

    def _read(self, gen: list[int], state: Prefix, base: str,
              t: int) -> tuple[str, Prefix] | None:
        """Token ``t``'s text after ``gen`` and a copy of ``state`` that read it, where it keeps the
        answer a start of an acceptable document (``t`` not an end token); else None."""
        delta = self._delta(gen, base, t)
        if not delta or "\ufffd" in delta:
            return None
        fed = state.copy()
        return (delta, fed) if fed.feed(delta) else None

    def _pick(self, gen: list[int], text: str, state: Prefix, scores: torch.Tensor, first: list[int]) -> int | None:
        """The likeliest token that keeps the row's answer a start of an acceptable document;
        ``first``: its top ``tries[0]`` tokens, already on the host."""
        if state.done:
            return self.ends[0] if self.ends else None
        base = self._decode(gen[-self.WINDOW:])
        tried = 0
        for k in self.tries:
            top = first if k == self.tries[0] else scores.topk(min(k, scores.shape[-1])).indices.tolist()
            for t in top[tried:]:
                if self._fits(gen, state, base, t):
                    return t
            tried = len(top)
        chars = self._char_tokens()
        for t in sorted(chars, key=lambda t: -float(scores[t])):
            delta = self._delta(gen, base, t)
            if delta is not None and state.copy().feed(delta):
                return t
        # Nothing tried continues it, but the text is whole already (a pattern whose next character no
        # likely token writes): end it there rather than leave the row as the model wants it.
        return self.ends[0] if self.ends and state.can_end() else None

    def pick(self, gens: list[list[int]], candidates: list[list[int]]) -> list[int]:
        """For each row, the place in ``candidates[r]`` (its likeliest ``tries[0]`` tokens, best
        first) of the token ``choose`` keeps, where it is among them: 0 for a row left as the model
        wants it, -1 where none of them fits (``choose`` then looks further, in the logits)."""
        out = []
        for r, (gen, cands) in enumerate(zip(gens, candidates)):
            got = None if self._schema(r) is None or not self._ends.isdisjoint(gen) else self._state(r, gen)
            if got is None:
                out.append(0)
                continue
            state = got[1]
            if state.done:
                out.append(0 if not self.ends else cands.index(self.ends[0]) if self.ends[0] in cands else -1)
                continue
            base = self._decode(gen[-self.WINDOW:])
            for j, t in enumerate(cands):
                if t in self._ends:
                    if state.can_end():
                        break
                elif (read := self._read(gen, state, base, t)) is not None:
                    self._kept[r] = (len(gen), t, *read)
                    break
            else:
                j = -1
            out.append(j)
        return out

    def choose(self, gens: list[list[int]], scores: torch.Tensor) -> list[int | None]:
        """Each row's token under its schema, given its answer's tokens so far and the step's
        logits (rows, vocabulary): None for a row left as the model wants it (unguided, finished,
        off the grammar, or no candidate fits). One transfer of every row's top candidates to the
        host, not one a row."""
        picks: list[int | None] = [None] * len(gens)
        live = [r for r, gen in enumerate(gens) if self._schema(r) is not None and self._ends.isdisjoint(gen)]
        if not live:
            return picks
        first = scores[live].topk(min(self.tries[0], scores.shape[-1])).indices.tolist()
        for j, r in enumerate(live):
            got = self._state(r, gens[r])
            if got is not None:
                picks[r] = self._pick(gens[r], got[0], got[1], scores[r], first[j])
        return picks

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        picks = self.choose(input_ids[:, self.start:].tolist(), scores)
        kept = [(r, t) for r, t in enumerate(picks) if t is not None]
        if not kept:
            return scores
        # A copy: generate keeps the tensor it passed in as the step's raw logits (output_logits),
        # from which the answer's own log-probabilities are read.
        rows = torch.tensor([r for r, _ in kept], device=scores.device)
        toks = torch.tensor([t for _, t in kept], device=scores.device)
        out = scores.clone()
        out[rows] = float("-inf")
        out[rows, toks] = scores[rows, toks]
        return out
