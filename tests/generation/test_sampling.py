"""Sampling at T > 0: speculative modes reproduce the AR distribution (exact rejection sampling);
:class:`SamplingParams` refuses a bad value in one line naming it."""

import dataclasses

import pytest
import torch
from helpers import device_generator, tiny_model
from scipy.stats import chi2_contingency

from trimode.generation.loop import Request, private_generator
from trimode.generation.sampling import SamplingParams, probabilities, speculative_accept

ROWS = 3000


def _pairs(model, mode, seed):
    """Sample (token 2, token 3) of many rows at once: these come from one speculative cycle."""
    gen = device_generator(seed)
    prompts = [[4, 5, 1]] * ROWS
    out, _, stats = model.decode_mode(mode, prompts, max_new_tokens=3, block_length=3, temperature=1.0,
                                      generator=gen, eos_token_id=[], return_stats=True)
    return [tuple(r) for r in out[:, 4:6].tolist()], stats


def test_speculative_sampling_matches_ar_distribution():
    model = tiny_model(seed=11, std=0.25, vocab_size=6, mask_token_id=3)
    ar, _ = _pairs(model, "ar", 0)
    cats = sorted(set(ar))
    for mode in ("linear-spec", "quadratic-spec"):
        spec, stats = _pairs(model, mode, 1)
        assert stats.accepted > 100 and stats.rolled_back > 100  # both branches of the rule are exercised
        cats_all = sorted(set(ar) | set(spec))
        table = [[ar.count(c) for c in cats_all], [spec.count(c) for c in cats_all]]
        # Pool rare cells so the chi-square approximation holds.
        keep = [i for i in range(len(cats_all)) if table[0][i] + table[1][i] >= 20]
        rest = [i for i in range(len(cats_all)) if i not in keep]
        rows = [[r[i] for i in keep] + [sum(r[i] for i in rest)] for r in table]
        p_value = chi2_contingency(rows)[1]
        assert p_value > 1e-3, (mode, p_value, len(cats))


def test_chi_square_detects_a_biased_sampler():
    """Power check: the same test rejects a sampler that is off by a little."""
    model = tiny_model(seed=11, std=0.25, vocab_size=6, mask_token_id=3)
    ar, _ = _pairs(model, "ar", 0)
    gen = device_generator(5)
    prompts = [[4, 5, 1]] * ROWS
    hot, _ = model.ar_generate(prompts, max_new_tokens=3, temperature=1.3, generator=gen, eos_token_id=[])
    biased = [tuple(r) for r in hot[:, 4:6].tolist()]
    cats = sorted(set(ar) | set(biased))
    rows = [[ar.count(c) for c in cats], [biased.count(c) for c in cats]]
    keep = [i for i in range(len(cats)) if rows[0][i] + rows[1][i] >= 20]
    assert chi2_contingency([[r[i] for i in keep] for r in rows])[1] < 1e-3


def test_rejection_rule_single_step_exact():
    """One position, known p and q: P(emit x) computed from the rule equals p(x)."""
    p = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    q = torch.tensor([[0.2, 0.6, 0.2]])
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(3)
    params = SamplingParams(temperature=1.0)
    n = 20000
    drafts = torch.multinomial(q[0], n, replacement=True, generator=gen).tolist()
    for d in drafts:
        k, tok = speculative_accept([d], q, p, params, gen)
        counts[d if k == 1 else tok] += 1
    assert torch.allclose(counts / n, p[0], atol=0.015)


def test_greedy_and_filters():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert probabilities(logits, SamplingParams()).argmax().item() == 1
    assert torch.allclose(probabilities(logits, SamplingParams()), logits.softmax(-1))
    top2 = probabilities(logits, SamplingParams(temperature=1.0, top_k=2))
    assert (top2[0, [0, 3]] == 0).all() and top2.sum().item() == pytest.approx(1)
    top_p = probabilities(logits, SamplingParams(temperature=1.0, top_p=0.5))
    assert top_p[0].tolist() == [0, 1, 0, 0]


def test_seeded_generation_is_reproducible_and_uses_no_global_rng():
    model = tiny_model(seed=2)
    kw = dict(max_new_tokens=12, temperature=0.8, top_k=20, eos_token_id=[])
    for mode in ("ar", "diffusion", "linear-spec", "quadratic-spec"):
        a, _ = model.decode_mode(mode, [[5, 6, 7]], generator=device_generator(3), **kw)
        torch.manual_seed(123)  # the global RNG must not matter
        b, _ = model.decode_mode(mode, [[5, 6, 7]], generator=device_generator(3), **kw)
        assert torch.equal(a, b), mode


def test_sampling_without_a_generator_leaves_the_global_rng_alone():
    model = tiny_model(seed=2)
    kw = dict(max_new_tokens=12, temperature=0.8, eos_token_id=[])
    torch.manual_seed(5)
    before = torch.get_rng_state()
    outputs = set()
    for mode in ("ar", "diffusion", "linear-spec", "quadratic-spec"):
        for _ in range(3):
            out, _ = model.decode_mode(mode, [[5, 6, 7]], **kw)
            outputs.add(tuple(out[0].tolist()))
    assert torch.equal(torch.get_rng_state(), before)
    assert len(outputs) > 4  # still sampling: a private generator, seeded anew per call


def test_a_generator_on_another_device_than_the_model_is_a_clear_error():
    request = Request(max_new_tokens=2, eos_token_ids=frozenset(), sampling=SamplingParams(temperature=1.0),
                      generator=torch.Generator())
    assert private_generator(request, torch.device("cpu")) is request
    with pytest.raises(ValueError, match="generator is on cpu but the model is on cuda"):
        private_generator(request, torch.device("cuda"))  # compares devices only: no GPU needed


def test_extreme_sampling_values_never_give_nan():
    logits = torch.tensor([[1.0, 3.0, 2.0, 3.0 - 1e-3]])
    for params in (SamplingParams(temperature=1e-300), SamplingParams(temperature=1.0, top_p=5e-324),
                   SamplingParams(temperature=1e-30, top_p=1e-9, top_k=1)):
        probs = probabilities(logits, params)
        assert torch.isfinite(probs).all() and probs.sum().item() == pytest.approx(1)
        assert probs.argmax().item() == 1


@pytest.mark.parametrize("bad, match", [
    (dict(temperature=-1.0), r"^temperature=-1.0 must be a number >= 0$"),
    (dict(temperature=float("nan")), r"^temperature=nan must be"),
    (dict(temperature="0.5"), r"^temperature='0.5' must be a number >= 0$"),  # strict: text is not a number
    (dict(top_k=-1), r"^top_k=-1 must be an integer >= 0 or None$"),
    (dict(top_k=True), r"^top_k=True must be an integer >= 0 or None$"),
    (dict(top_p=0.0), r"^top_p=0.0 must be a number in \(0, 1\] or None$"),
    (dict(top_p=1.5), r"^top_p=1.5 must be a number in \(0, 1\] or None$"),
    (dict(topk=5), r"^topk=5: SamplingParams has no such setting$"),
])
def test_a_bad_sampling_value_is_one_line_naming_it(bad, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**bad)


def test_sampling_params_are_built_like_the_frozen_dataclass_they_were():
    params = SamplingParams(0.5, 3, 0.9)  # positional, as the model's API and the server build them
    assert (params.temperature, params.top_k, params.top_p, params.greedy) == (0.5, 3, 0.9, False)
    assert params.validate() is params and params == SamplingParams(temperature=0.5, top_k=3, top_p=0.9)
    assert dataclasses.asdict(params) == {"temperature": 0.5, "top_k": 3, "top_p": 0.9}
    assert dataclasses.replace(params, temperature=0).greedy and SamplingParams().greedy
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.temperature = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"^temperature=-2.0 must be"):  # a positional value is named too
        SamplingParams(-2.0)
    with pytest.raises(ValueError, match=r"^top_p=2.0 must be"):
        dataclasses.replace(params, top_p=2.0)
