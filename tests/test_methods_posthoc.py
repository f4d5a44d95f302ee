"""MSP, MaxLogit, entropy and energy against hand-computed values; smoothing; option errors."""

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from ood_bench.baselines import gaussian_smooth, get_method
from ood_bench.baselines.base import STRIP_SIZE, in_strips, train_ids
from ood_bench.baselines.posthoc import SCORES
from ood_bench.errors import OodBenchError, UnknownNameError
from ood_bench.models.base import SegOutput

# Three pixels, C = 3 classes:
#   a = [0, ln 3, ln 4]  → softmax [1/8, 3/8, 4/8]
#   b = [5, 5, 5]        → softmax [1/3, 1/3, 1/3]
#   c = [1000, 0, 0]     → softmax [1, ~0, ~0] (overflow check)
LOGITS = torch.tensor(
    [[0.0, math.log(3), math.log(4)], [5.0, 5.0, 5.0], [1000.0, 0.0, 0.0]]
).T.reshape(1, 3, 1, 3)

# −Σ p log p for a = 1/8·3ln2 + 3/8·(3ln2 − ln3) + 1/2·ln2 = 2 ln2 − 3/8 ln3
EXPECTED = {
    "msp": [1 - 1 / 2, 1 - 1 / 3, 0.0],
    "maxlogit": [-math.log(4), -5.0, -1000.0],
    "entropy": [(2 * math.log(2) - 3 / 8 * math.log(3)) / math.log(3), 1.0, 0.0],
    "energy": [-math.log(8), -(5 + math.log(3)), -1000.0],
}


def scores(name: str, logits: torch.Tensor = LOGITS, **options) -> torch.Tensor:
    method = get_method(name, **options)
    return method.score_output(SegOutput(logits, torch.empty(0)))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_scores_match_hand_computed_values(name):
    result = scores(name)
    assert result.shape == (1, 1, 3)
    np.testing.assert_allclose(result[0, 0].numpy(), EXPECTED[name], rtol=1e-6, atol=1e-6)


def test_energy_temperature():
    # T = 2: −2·ln(e^0 + e^{ln3/2} + e^{ln4/2}) = −2 ln(3 + √3); −2·ln(3 e^{2.5}) = −5 − 2 ln 3
    expected = [-2 * math.log(3 + math.sqrt(3)), -5 - 2 * math.log(3), -1000.0]
    result = scores("energy", temperature=2.0)
    np.testing.assert_allclose(result[0, 0].numpy(), expected, rtol=1e-6)
    assert get_method("energy", temperature=2).config()["temperature"] == 2.0


def test_entropy_is_normalised_by_log_num_classes():
    uniform = torch.zeros(1, 19, 2, 2)
    np.testing.assert_allclose(scores("entropy", uniform).numpy(), 1.0, rtol=1e-6)
    two_classes = torch.tensor([0.0, math.log(3)]).view(1, 2, 1, 1)  # p = [1/4, 3/4]
    expected = (0.25 * math.log(4) + 0.75 * math.log(4 / 3)) / math.log(2)
    np.testing.assert_allclose(scores("entropy", two_classes).item(), expected, rtol=1e-6)


def test_score_orders_confident_pixels_below_uncertain_ones():
    for name in EXPECTED:
        a, b, c = scores(name)[0, 0].tolist()
        assert c < a, name  # the saturated pixel is the least anomalous under every score


def test_gaussian_smooth_matches_scipy_reflect_filter():
    rng = np.random.default_rng(0)
    maps = rng.random((2, 11, 13)).astype(np.float32)
    expected = np.stack([gaussian_filter(m, sigma=1.0, truncate=3.0, mode="mirror") for m in maps])
    np.testing.assert_allclose(gaussian_smooth(torch.from_numpy(maps)).numpy(), expected, atol=1e-6)


def test_smoothing_option_blurs_the_score_map():
    logits = torch.randn(2, 19, 16, 20)
    output = SegOutput(logits, torch.empty(0))
    plain = get_method("energy").score_output(output)
    smoothed = get_method("energy", smoothing=True).postprocess(plain)
    torch.testing.assert_close(smoothed, gaussian_smooth(plain))
    assert smoothed.std() < plain.std()
    # a constant map stays constant (reflect padding does not pull borders towards 0)
    constant = torch.full((1, 9, 9), 3.0)
    torch.testing.assert_close(gaussian_smooth(constant), constant)


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("msp", {"temperature": 2.0}, "temperature applies to 'energy' only"),
        ("energy", {"temperature": 0}, "temperature must be a number > 0, got 0"),
        ("odin", {"temperature": "hot"}, "temperature must be a number > 0"),
        ("energy", {"smoothing": "yes"}, "smoothing must be True or False"),
        ("msp", {"blur": True}, "takes no option blur; valid options:"),
        ("odin", {"epsilon": -1}, "epsilon must be a number >= 0, got -1"),
        ("odin", {"chunk": 0}, "chunk must be a positive integer"),
    ],
)
def test_bad_options_raise_clear_errors(name, options, message):
    with pytest.raises(OodBenchError, match=message):
        get_method(name, **options)


def test_unknown_method_lists_valid_names():
    with pytest.raises(UnknownNameError, match="Did you mean 'energy'"):
        get_method("enrgy")


def test_train_ids_is_the_first_argmax():
    logits = torch.tensor([[1.0, 3.0, 3.0], [2.0, 0.0, 2.0], [0.0, 0.0, 5.0]]).T.reshape(1, 3, 1, 3)
    assert train_ids(logits).tolist() == [[[1, 0, 2]]]
    assert train_ids(logits).dtype == torch.int64


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_strip_wise_scoring_equals_whole_map(name):
    logits = torch.randn(2, 19, STRIP_SIZE // 19 * 2 + 5, 9) * 4
    whole = SCORES[name](logits)
    torch.testing.assert_close(in_strips(SCORES[name], logits), whole, rtol=0, atol=0)
    torch.testing.assert_close(scores(name, logits), whole, rtol=0, atol=0)
