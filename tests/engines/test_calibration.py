"""potstill.engines.calibration: the int8 calibration a trained student carries, on the taught tiny
model (built from a config; see conftest)."""

from __future__ import annotations

import shutil

import pytest
import torch

from potstill.engines import calibration, load_engine, recheck_margin_for
from potstill.errors import PotstillError
from potstill.models import int8
from potstill.models.prompting import label_token_ids

from .conftest import CHAT, DATA, LABELS, MSGS


@pytest.fixture()
def calibrated(tmp_path, taught):
    student = tmp_path / "student"
    shutil.copytree(taught, student)
    ref = load_engine("transformers", str(student), device="cpu")
    ids = label_token_ids(ref.tokenizer, CHAT, LABELS)
    cal = calibration.calibrate(student, CHAT, MSGS * 3, ids)
    return student, cal, ids


def test_calibrate_writes_ranges_and_a_margin_from_the_measured_noise(calibrated):
    """Every decoder linear gets its input ranges; with these few inputs (too few for the 1% bound)
    the margin is 1.25x the largest label noise of the smoothed int8 layers against fp32 on the
    calibration inputs (within the bounds); the file
    reads back the same, and nothing temporary is left."""
    student, cal, ids = calibrated
    ref = load_engine("transformers", str(student), device="cpu")
    layers = ref.lm.model.config.num_hidden_layers
    assert len(cal.absmax) == 7 * layers and all(v.dim() == 1 and (v > 0).all() for v in cal.absmax.values())
    info = cal.info
    assert info["inputs"] == 3 * len(MSGS) and 0 <= info["same_label_as_fp32"] <= 1
    assert cal.recheck_margin == pytest.approx(min(calibration.MAX_MARGIN, max(calibration.MIN_MARGIN,
                                                                                 1.25 * info["noise"]["max"])))
    # The noise as a caller would measure it, from the engines themselves.
    fast = load_engine("transformers", str(student), device="cpu")
    fast.quantize_int8(calibration.load(student))
    p_fast = torch.softmax(fast.score_labels(CHAT, MSGS, ids, batch_size=4).logits, -1)
    p_ref = torch.softmax(ref.score_labels(CHAT, MSGS, ids, batch_size=4).logits, -1)
    assert float(calibration.label_noise(p_fast, p_ref).max()) == pytest.approx(info["noise"]["max"], abs=1e-5)
    back = calibration.load(student)
    assert back.info == info and set(back.absmax) == set(cal.absmax)
    assert all(torch.equal(back.absmax[k], cal.absmax[k]) for k in cal.absmax)
    assert [p.name for p in student.iterdir() if p.name.startswith(".")] == []


def test_label_noise_bounds_every_flip():
    """An input's label changes between two engines only where its noise exceeds the fast margin:
    checked on 20,000 random pairs of nearby label distributions, many of them flipped; and the
    noise is at most twice the largest change of one probability (the earlier rule's quantity)."""
    from potstill.models.scoring import label_margin

    g = torch.Generator().manual_seed(0)
    ref = torch.softmax(torch.randn(20_000, 5, generator=g) * 2, -1)
    fast = torch.softmax(torch.log(ref) + 0.3 * torch.randn(20_000, 5, generator=g), -1)
    noise = calibration.label_noise(fast, ref)
    flips = fast.argmax(-1) != ref.argmax(-1)
    assert flips.sum() > 500
    margin = label_margin(torch.log(fast))
    assert (noise[flips] > margin[flips]).all()
    assert (noise >= 0).all() and (noise <= 2 * (fast - ref).abs().amax(-1) + 1e-6).all()
    assert torch.equal(calibration.label_noise(ref, ref), torch.zeros(20_000))


def test_margin_is_the_order_statistic_that_bounds_the_unrechecked_flips():
    """With 1% and 95%: 512 inputs -> the 2nd largest noise (P(Bin(512, 1%) <= 1) = 0.036, <= 2:
    0.11); 1,000 -> the 5th; 299 -> the largest; 298 (too few) -> 1.25x the largest; within bounds."""
    noise = torch.arange(1000, 0, -1, dtype=torch.float32) / 4000  # 0.25, 0.24975, ...
    assert calibration.margin_from_noise(noise[:512]) == pytest.approx(float(noise[1]))
    assert calibration.margin_from_noise(noise) == pytest.approx(float(noise[4]))
    assert calibration.margin_from_noise(noise[:299]) == pytest.approx(float(noise[0]))
    assert calibration.margin_from_noise(noise[:298]) == pytest.approx(1.25 * float(noise[0]))
    assert calibration.margin_from_noise(noise[:298] * 10) == calibration.MAX_MARGIN
    assert calibration.margin_from_noise(torch.zeros(1000)) == calibration.MIN_MARGIN
    # The bound it promises, on noise drawn from one distribution: a fresh draw's share above the
    # margin is at most 1% in at least 95% of 400 calibrations.
    g = torch.Generator().manual_seed(1)
    over = [float((0.4 * torch.rand(100_000, generator=g) >
                   calibration.margin_from_noise(0.4 * torch.rand(512, generator=g))).float().mean())
            for _ in range(400)]
    assert sum(o <= calibration.EPS for o in over) >= 0.95 * 400


def test_auto_margin_and_smoothing_reach_the_int8_engine(calibrated, taught):
    """recheck_margin auto: the calibrated margin for engine transformers int8, 0.3 for another
    engine or an uncalibrated student; the compiled int8 engine is smoothed, keyed apart, and gives
    the taught labels."""
    from potstill.engines.recheck import RecheckedEngine

    student, cal, ids = calibrated
    assert recheck_margin_for("auto", "transformers", str(student), "int8") == cal.recheck_margin
    assert recheck_margin_for("auto", "ctranslate2", str(student), "auto") == calibration.DEFAULT_MARGIN
    assert recheck_margin_for("auto", "transformers", str(taught), "int8") == calibration.DEFAULT_MARGIN
    assert recheck_margin_for(0.05, "transformers", str(student), "int8") == 0.05
    eng = load_engine("transformers", str(student), device="cpu", quantization="int8", compile=True,
                      recheck_margin="auto")
    assert isinstance(eng, RecheckedEngine) and eng.margin == cal.recheck_margin
    assert f"#int8-smooth0.65-outliers{int8.OUTLIERS}-" in eng.fast.identity
    assert f"+recheck{cal.recheck_margin:g}-" in eng.identity
    body = eng.fast.lm.model.model._orig_mod
    assert all(m.smoothed for m in body.modules() if type(m).__name__ == "Int8Linear")
    plain = load_engine("transformers", str(taught), device="cpu", quantization="int8", compile=True)
    assert "#int8+compiled" in plain.identity and "smooth" not in plain.identity
    got = eng.fast.score_labels(CHAT, MSGS, ids, batch_size=4)
    assert [LABELS[i] for i in got.logits.argmax(-1).tolist()] == [lab for _, lab in DATA]


def test_a_corrupt_or_foreign_calibration_is_one_clear_error(calibrated):
    student, _, _ = calibrated
    target = calibration.path(student)
    target.write_bytes(b"not a safetensors file")
    with pytest.raises(PotstillError, match="not a readable int8 calibration") as e:
        load_engine("transformers", str(student), device="cpu", quantization="int8", compile=True)
    assert "\n" not in str(e.value) and str(target) in str(e.value)
    from safetensors.torch import save_file

    save_file({"x": torch.ones(2)}, str(target), metadata={"potstill": '{"version": 99}'})
    with pytest.raises(PotstillError, match="int8 calibration version 99, this potstill reads 1"):
        calibration.load(student)


def test_a_calibration_of_other_shapes_is_one_clear_error(calibrated):
    """Ranges of another model's shapes (a layer with fewer inputs) are refused in one line at load."""
    import json

    from safetensors.torch import save_file

    student, cal, _ = calibrated
    absmax = dict(cal.absmax)
    name = sorted(absmax)[0]
    absmax[name] = absmax[name][:-1]
    save_file({k: v.contiguous() for k, v in absmax.items()}, str(calibration.path(student)),
              metadata={"potstill": json.dumps(cal.info)})
    with pytest.raises(PotstillError, match="its int8 calibration does not fit the model") as e:
        load_engine("transformers", str(student), device="cpu", quantization="int8", compile=True)
    assert "\n" not in str(e.value)


def test_a_calibrated_students_identity_is_its_weights_not_its_calibration(calibrated):
    """The identity (ledger rows, served model name, routing and drift caches) hashes the weights: a
    calibrated student whose weights change in place, the old calibration left beside them, gets a
    new one, and its identity is the same as without the file."""
    from potstill.models.loading import load_lm

    student, _, _ = calibrated
    before = load_lm(str(student), device="cpu")
    with torch.no_grad():
        before.model.lm_head.weight.mul_(1.01)
    before.model.save_pretrained(student)  # weights only: the calibration file stays
    after = load_lm(str(student), device="cpu").identity
    assert after != before.identity
    calibration.path(student).unlink()
    assert load_lm(str(student), device="cpu").identity == after


def test_a_calibration_of_other_weights_or_layers_is_refused_not_used(calibrated, tmp_path):
    """Ranges that fit every shape but were measured on other weights (the student retrained in place
    by another tool, the old file left beside it) or on a deeper model of the same width are refused
    in one line; unrefused, int8 ran smoothed by them with another model's re-check margin."""
    import json

    from safetensors.torch import save_file

    from potstill.engines.transformers import TransformersEngine
    from potstill.models.loading import load_lm
    from tests.helpers.tiny import make_model_dir

    student, cal, _ = calibrated
    assert TransformersEngine.load(str(student), device="cpu").quantize_int8(
        calibration.load(student)) is None  # its own still loads
    lm = load_lm(str(student), device="cpu")
    with torch.no_grad():
        lm.model.lm_head.weight.mul_(1.01)
    lm.model.save_pretrained(student)  # weights only: the calibration file stays
    eng = TransformersEngine.load(str(student), device="cpu")
    with pytest.raises(PotstillError, match=r"its int8 calibration does not fit the model \(it was measured on "
                                            r"weights [0-9a-f]{12}, these are [0-9a-f]{12}\)") as e:
        eng.quantize_int8(calibration.load(student))
    assert "\n" not in str(e.value) and not eng.int8

    shallow = make_model_dir(tmp_path / "shallow", layers=1)  # same width, one layer fewer
    info = {k: v for k, v in cal.info.items() if k != "weights"}  # as written before the digest was kept
    save_file({k: v.contiguous() for k, v in cal.absmax.items()}, str(calibration.path(shallow)),
              metadata={"potstill": json.dumps(info)})
    eng = TransformersEngine.load(str(shallow), device="cpu")
    with pytest.raises(PotstillError, match=r"it has ranges for \d+ layers the model lacks, e\.g\. layers\.1\."):
        eng.quantize_int8(calibration.load(shallow))
