"""Architectures that scale their logits after the LM head (Granite divides by ``logits_scaling``,
Cohere multiplies by ``logit_scale``): the training heads and label scoring use the logits the
model's own forward gives, not the bare ``hidden @ W.T``."""

from __future__ import annotations

import pytest
import torch

from potstill.models.loading import load_lm
from potstill.models.logit_scale import logit_scale
from potstill.models.scoring import apply_head, decoder
from potstill.train.batching import Example, collate
from potstill.train.loss_module import LossModule, LossSpec, fused_head_ok
from potstill.train.teacher import KDTeacher
from tests.helpers.tiny import make_tokenizer

SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=128, tie_word_embeddings=True, initializer_range=0.5)


def _make(path, arch: str, seed: int = 0):
    import transformers

    tok = make_tokenizer()
    extra = {"granite": {"logits_scaling": 8.0}, "cohere": {"logit_scale": 0.0625}, "llama": {},
             "gemma2": {"final_logit_softcapping": 30.0, "head_dim": 8}}[arch]
    config_cls, model_cls = {"granite": ("GraniteConfig", "GraniteForCausalLM"),
                             "cohere": ("CohereConfig", "CohereForCausalLM"),
                             "llama": ("LlamaConfig", "LlamaForCausalLM"),
                             "gemma2": ("Gemma2Config", "Gemma2ForCausalLM")}[arch]
    cfg = getattr(transformers, config_cls)(vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                            eos_token_id=tok.eos_token_id, bos_token_id=None, **SIZES, **extra)
    torch.manual_seed(seed)
    getattr(transformers, model_cls)(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("scaled")
    return {arch: _make(root / arch, arch) for arch in ("granite", "cohere", "llama", "gemma2")}


def _examples(vocab: int) -> list[Example]:
    g = torch.Generator().manual_seed(0)
    return [Example(ids=torch.randint(5, vocab, (n,), generator=g).tolist(), n_prompt=n // 2) for n in (9, 14, 6)]


@pytest.mark.parametrize("arch,scale", [("granite", 0.125), ("cohere", 0.0625), ("llama", 1.0), ("gemma2", 1.0)])
def test_the_scale_is_read_off_the_model_exactly_and_label_scores_match_its_forward(models, arch, scale):
    lm = load_lm(str(models[arch]), device="cpu")
    assert logit_scale(lm.model) == scale  # exact: matched to the config's value (1/8, not 0.12500003)
    ids = torch.tensor([[7, 19, 23, 4, 11]])
    with torch.no_grad():
        own = lm.model(input_ids=ids).logits[0, -1]
        last = decoder(lm.model)(input_ids=ids).last_hidden_state[0, -1:]
        rows = [3, 8, 21]
        torch.testing.assert_close(apply_head(lm.model, last, rows)[0], own[rows], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(apply_head(lm.model, last)[0], own, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["granite", "cohere"])
def test_training_losses_are_the_models_own(models, tmp_path, arch):
    """CE and logits KD through the chunked heads equal the losses computed from each model's own
    logits. Before, Granite's CE was 11.5 where its own forward gives 3.9: the student was fitted to
    logits it never produces, 8x flatter at inference."""
    student = load_lm(str(models[arch]), device="cpu")
    teacher_dir = _make(tmp_path / "teacher", arch, seed=1)
    teacher = KDTeacher(str(teacher_dir), student, torch.device("cpu"))
    assert fused_head_ok(student.model) and teacher.scale == logit_scale(student.model) != 1.0
    spec = LossSpec("forward_kl", 0.5, 0.0, 1.0, None, True, logit_scale(student.model))
    module = LossModule(student.model, student.model).eval()
    b = collate(_examples(student.model.config.vocab_size), student.tokenizer.pad_token_id, student.device,
                kd_tokens=True)
    with torch.no_grad():
        got = module(b, spec, teacher_h=teacher.hidden(b), teacher_w=teacher.w)
        ls = student.model(input_ids=b.ids, attention_mask=b.attention_mask).logits[:, :-1].double().log_softmax(-1)
        lt = teacher.lm.model(input_ids=b.ids, attention_mask=b.attention_mask).logits[:, :-1].double().log_softmax(-1)
    ce_sel = b.ce_targets != -100
    ce = -ls[ce_sel].gather(-1, b.ce_targets[ce_sel][:, None]).sum()
    kd_sel = b.kd_targets != -100
    kd = (lt.exp() * (lt - ls)).sum(-1)[kd_sel].sum()
    assert float(ce) > 1.0 and float(kd) > 0.1  # lively models: a wrong scale shows
    assert float(got["ce"]) == pytest.approx(float(ce), rel=1e-4)
    assert float(got["kd"]) == pytest.approx(float(kd), rel=1e-4)


def test_a_head_that_reads_its_multiplier_off_the_decoder_is_measured_too():
    """Falcon-H1 multiplies its logits by ``self.model.lm_head_multiplier``, an attribute of the decoder
    the probe stands in for: it must still read it (a failed probe is taken as no scale)."""
    import transformers

    cfg = transformers.FalconH1Config(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, mamba_d_ssm=32, mamba_n_heads=4,
                                      mamba_d_head=8, mamba_n_groups=1, mamba_d_state=8,
                                      lm_head_multiplier=0.0390625, tie_word_embeddings=False)
    model = transformers.FalconH1ForCausalLM(cfg).eval()
    assert logit_scale(model) == 0.0390625
    assert type(model.model).__name__ == "FalconH1Model"  # the decoder is back in place
