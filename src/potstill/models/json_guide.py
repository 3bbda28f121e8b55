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
only an end token. A row none of whose candidates fits is left as the model wants it, and its
answer then fails validation.

A token may end part-way through a character (byte-level BPE writes "東", "☕", and with a small
vocabulary "é", as two or more tokens of its UTF-8 bytes): its bytes wait beside the row's text, the
prefix reads only whole characters, and the token is kept only where a character those bytes begin
may come next (``models.utf8_tail``), so a guided answer can hold any character an unguided one can.
Where none of the likely tokens finishes such a character, the last resort is the one-byte tokens of
UTF-8's continuation bytes (byte-level BPE and byte fallback have all 64).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from potstill.models.grammar_constraint import GRAMMAR, GrammarPrefix
from potstill.models.json_constraint import WS, JsonPrefix
from potstill.models.regex_constraint import REGEX, RegexPrefix
from potstill.models.utf8_tail import BYTE_CHARS, added_ids, byte_level, piece_bytes, span, split

Prefix = JsonPrefix | RegexPrefix | GrammarPrefix  # what reads a row's answer under its guide
Row = tuple[str, Prefix, bytes]  # a row's answer so far: its whole characters, their state, a character's first bytes


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
        self.rows: dict[int, tuple[list[int], str, Prefix, bytes]] = {}
        self._chars: list[int] | None = None
        self._follows: list[int] | None = None
        self._native = native_decode(tokenizer)
        self._byte_level = byte_level(tokenizer)
        self._added: frozenset[int] | None = None
        self._bytes: dict[int, bytes | None] = {}
        # Per row, the token ``pick`` (or ``choose``) kept last (the answer's length before it, the
        # token, its text, the state that read it, a character's bytes it left unfinished): the next
        # step's ``_state`` takes them instead of decoding and reading the token again.
        self._kept: dict[int, tuple[int, int, str, Prefix, bytes]] = {}

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

    def _continuations(self) -> list[int]:
        """Tokens that are one UTF-8 continuation byte (0x80 to 0xBF) each: the last resort for a
        character split across tokens, since one of them carries it on toward a character the
        guide takes (``_read`` kept its first bytes only where one may come)."""
        if self._follows is None:
            spelled = {b: c for c, b in BYTE_CHARS.items()}
            ids = set()
            for b in range(0x80, 0xC0):
                for piece in (f"<0x{b:02X}>", spelled[b]):
                    t = self.tok.convert_tokens_to_ids(piece)
                    if isinstance(t, int) and self._token_bytes(t) == bytes([b]):
                        ids.add(t)
            self._follows = sorted(ids)
        return self._follows

    def _decode(self, ids: list[int]) -> str:
        if self._native is not None:
            return self._native(ids, skip_special_tokens=False)
        return self.tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _delta(self, ids: list[int], base: str, t: int) -> str | None:
        """The text token ``t`` adds after ``ids``, whose last ``WINDOW`` tokens decode to ``base``
        (a decode of the window, not of the whole answer, per candidate tried); None where the
        window's text does not stay a prefix."""
        now = self._decode(ids[-self.WINDOW:] + [t])
        return now[len(base):] if now.startswith(base) else None

    def _token_bytes(self, t: int) -> bytes | None:
        """Token ``t``'s bytes where its piece spells bytes (``utf8_tail.piece_bytes``), cached."""
        if t not in self._bytes:
            if self._added is None:
                self._added = added_ids(self.tok)
            self._bytes[t] = piece_bytes(self.tok, t, self._byte_level, self._added)
        return self._bytes[t]

    def _schema(self, r: int) -> dict | None:
        return self.schema if self.schemas is None else self.schemas[r]

    def _state(self, r: int, gen: list[int]) -> Row | None:
        """The decoded answer so far (its whole characters), its prefix state and the bytes of a
        character its last token left unfinished (None where it left the grammar)."""
        ids, text, state, tail = self.rows.get(r) or ([], "", text_prefix(self._schema(r)), b"")
        if gen[: len(ids)] != ids:
            ids, text, state, tail = [], "", text_prefix(self._schema(r)), b""
        kept = self._kept.pop(r, None)
        if kept is not None and len(gen) == len(ids) + 1 and kept[:2] == (len(ids), gen[-1]):
            ids, text, state, tail = list(gen), text + kept[2], kept[3], kept[4]  # pick read this token already
        elif len(gen) > len(ids):
            # Tokens it has not read yet: more than one (a catch-up) as one decode, unless that splits
            # a character; else one at a time, as ``pick`` reads them.
            now = self._decode(gen) if len(gen) > len(ids) + 1 and not tail else None
            if now is not None and "\ufffd" not in now[len(text):]:
                if not now.startswith(text) or not state.feed(now[len(text):]):
                    return None
                text = now
            else:
                for k in range(len(ids), len(gen)):
                    read = self._read(gen[:k], state, self._decode(gen[max(0, k - self.WINDOW):k]), gen[k], tail)
                    if read is None:
                        return None
                    text, state, tail = text + read[0], read[1], read[2]
            ids = list(gen)
        self.rows[r] = (ids, text, state, tail)
        return text, state, tail

    def _read(self, gen: list[int], state: Prefix, base: str, t: int,
              tail: bytes = b"") -> tuple[str, Prefix, bytes] | None:
        """Token ``t``'s whole characters after ``gen``, a copy of ``state`` that read them and the
        bytes of a character it leaves unfinished, where it keeps the answer a start of an
        acceptable document (``t`` not an end token); else None. A token that begins, continues or
        finishes a character split across tokens is read as bytes (``utf8_tail``); any other as
        the text it adds to the window's decode."""
        if not tail:
            delta = self._delta(gen, base, t)
            if delta and "\ufffd" not in delta:
                fed = state.copy()
                return (delta, fed, b"") if fed.feed(delta) else None
            # A token that writes nothing is refused; one whose text the window's decode loses (a byte
            # fallback decodes the bytes before it as U+FFFD too, until the character is whole) is read
            # as its bytes.
            if delta == "":
                return None
        raw = self._token_bytes(t)
        got = None if not raw else split(tail + raw)
        if got is None:
            return None
        delta, tail = got
        fed = state.copy()
        if not fed.feed(delta):
            return None
        if tail:  # some character these bytes begin must be able to come next
            lo, hi = span(tail)
            if not fed.opens(lo, hi):
                return None
        return delta, fed, tail

    def _first(self, r: int, gen: list[int], state: Prefix, tail: bytes, base: str, cands: list[int]) -> int | None:
        """The place in ``cands`` of the first token that keeps row ``r``'s answer a start of an
        acceptable document (an end token: where it is whole), noted in ``_kept`` for the next
        step's ``_state``; None where none does."""
        for j, t in enumerate(cands):
            if t in self._ends:
                if not tail and state.can_end():
                    return j
            elif (read := self._read(gen, state, base, t, tail)) is not None:
                self._kept[r] = (len(gen), t, *read)
                return j
        return None

    def _pick(self, r: int, gen: list[int], state: Prefix, tail: bytes, scores: torch.Tensor,
              first: list[int]) -> int | None:
        """The likeliest token that keeps row ``r``'s answer a start of an acceptable document;
        ``first``: its top ``tries[0]`` tokens, already on the host."""
        if state.done and not tail:
            return self.ends[0] if self.ends else None
        base = self._decode(gen[-self.WINDOW:])
        tried = 0
        for k in self.tries:
            top = first if k == self.tries[0] else scores.topk(min(k, scores.shape[-1])).indices.tolist()
            j = self._first(r, gen, state, tail, base, top[tried:])
            if j is not None:
                return top[tried + j]
            tried = len(top)
        chars = sorted(self._continuations() if tail else self._char_tokens(), key=lambda t: -float(scores[t]))
        j = self._first(r, gen, state, tail, base, chars)
        if j is not None:
            return chars[j]
        # Nothing tried continues it, but the text is whole already (a pattern whose next character no
        # likely token writes): end it there rather than leave the row as the model wants it.
        return self.ends[0] if self.ends and not tail and state.can_end() else None

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
            _, state, tail = got
            if state.done and not tail:
                out.append(0 if not self.ends else cands.index(self.ends[0]) if self.ends[0] in cands else -1)
                continue
            j = self._first(r, gen, state, tail, self._decode(gen[-self.WINDOW:]), cands)
            out.append(-1 if j is None else j)
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
                picks[r] = self._pick(r, gens[r], got[1], got[2], scores[r], first[j])
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
