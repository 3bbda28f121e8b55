"""Training examples longer than ``student.max_length``: what train does with each kind, and says.

``build_examples`` fits an example to ``max_length`` by cutting its prompt's start first (``cut``);
an answer longer than ``max_length - 1`` also loses its end (``answer_cut``). Split out of
trainer.py, which holds the loop.
"""

from __future__ import annotations

from potstill.errors import PotstillError
from potstill.progress import say
from potstill.train.batching import Example


def without_cut_answers(examples: list[Example], val_examples: list[Example], max_length: int,
                        main: bool) -> tuple[list[Example], list[Example]]:
    """The training and validation examples less those whose answer was cut, counted in one line
    (``main``: this process says it). None left to train on is an error.

    An answer longer than max_length - 1 keeps its start after one prompt token, and loses its end
    and end-of-turn: trained on, the student learns to answer with no input and never to stop. TRL
    truncates such a sequence (keeping its prompt); here the prompt is what a cut takes first, so
    what is left teaches nothing the task asks: the example is left out and counted, as a warning."""
    long = [e for e in examples + val_examples if e.answer_cut]
    if not long:
        return examples, val_examples
    n_train, n_val = sum(1 for e in examples if e.answer_cut), sum(1 for e in val_examples if e.answer_cut)
    what = (f"{n_train} of {len(examples)} training examples"
            + (f" and {n_val} of {len(val_examples)} validation examples" if n_val else "")
            + f" have an answer longer than student.max_length {max_length} tokens (the longest "
            f"{max(len(e.ids) - e.n_prompt + e.answer_cut for e in long)}): cut to fit, each would keep one "
            "prompt token and lose its answer's end, teaching the student to write with no input and never stop")
    if n_train == len(examples):
        raise PotstillError(f"train: {what}; none is left to train on: raise student.max_length")
    if main:
        say(f"[yellow]train: {what}; they are left out (raise student.max_length to keep them)[/yellow]")
    return [e for e in examples if not e.answer_cut], [e for e in val_examples if not e.answer_cut]


def say_cut_prompts(examples: list[Example], max_length: int, context: int | None) -> None:
    """One line where training examples lost their prompt's start, with the ``student.max_length``
    that would keep them, never past the student's positions (``context``, None where unknown).

    Cut from the start, a chat prompt loses its instruction first, while evaluate and serve give the
    student the whole prompt: what it learns and what it is asked then differ. Preflight refuses a
    max_length past the positions (a GPT-2 student fails there with an IndexError); an input longer
    than them is served by the teacher (too_long)."""
    cut = [e for e in examples if e.cut]
    if not cut:
        return
    longest = max(len(e.ids) + e.cut for e in cut)
    if context is None or longest <= context:
        fix = f"raise student.max_length to {longest} to train on what is served"
    elif max_length < context:
        fix = (f"raise student.max_length to {context}, the student's positions and the most it reads (serve "
               "sends longer chats to the teacher)")
    else:
        fix = f"the student has {context} positions, and serve sends longer chats to the teacher"
    say(f"[yellow]train: {len(cut)} of {len(examples)} training examples are longer than student.max_length "
        f"{max_length} tokens (the longest {longest}) and lost their start, the instruction first; evaluate "
        f"and serve see them whole: {fix}[/yellow]")
