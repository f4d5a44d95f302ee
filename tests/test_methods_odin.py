"""ODIN: the gradient step against finite differences, the SMIYC quirks, chunking, presets."""

import numpy as np
import pytest
import torch
from methods_helpers import TinySeg, finite_difference

from ood_bench.baselines import get_method
from ood_bench.models.inference import IMAGENET_STD

STD = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)


@pytest.fixture
def model():
    return TinySeg().double().eval()


@pytest.fixture
def images():
    return torch.randn(1, 3, 4, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def reference_loss(model, images, temperature, quirks):
    """−Σ_pixels log S_ŷ (original) or Σ CE(softmax(f), ŷ) (SMIYC), ŷ fixed at the clean argmax."""
    target = model(images).logits.argmax(1, keepdim=True)

    def loss(x):
        with torch.no_grad():
            logits = model(x).logits
            inputs = torch.softmax(logits, 1) if quirks else logits / temperature
            return -torch.log_softmax(inputs, 1).gather(1, target).sum().item()

    return loss


@pytest.mark.parametrize("quirks", [False, True])
def test_perturbation_matches_finite_difference_sign(model, images, quirks):
    temperature, epsilon = 2.0, 0.01
    method = get_method("odin", temperature=temperature, epsilon=epsilon, smiyc_quirks=quirks)
    loss = reference_loss(model, images, temperature, quirks)
    grad = finite_difference(loss, images)
    assert (grad.abs() > 1e-7).all()  # every element has a clear sign to compare
    if quirks:  # + ε·sign(∇L) in normalised space
        expected = images + epsilon * grad.sign()
    else:  # − ε·sign(∇L) / std  (original ODIN)
        expected = images - epsilon * grad.sign() / STD
    perturbed, prediction = method.perturb(model, images)
    torch.testing.assert_close(perturbed, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(prediction, model(images).logits.argmax(1))
    # original ODIN lowers the loss (raises the max scaled softmax); the SMIYC step raises it
    assert (loss(perturbed) < loss(images)) is (not quirks)


def test_score_is_one_minus_max_scaled_softmax_of_perturbed_input(model, images):
    method = get_method("odin", temperature=5.0, epsilon=0.002)
    grad = finite_difference(reference_loss(model, images, 5.0, False), images)
    perturbed = images - 0.002 * grad.sign() / STD
    with torch.no_grad():
        probs = torch.softmax(model(perturbed).logits / 5.0, 1).numpy()
    out = method.score(model, images)
    np.testing.assert_allclose(out.scores.numpy(), 1 - probs.max(1), rtol=1e-5)
    assert out.scores.dtype == torch.float32
    torch.testing.assert_close(out.prediction, model(images).logits.argmax(1))


def test_presets():
    assert get_method("odin").config() == {
        "name": "odin", "smoothing": False, "temperature": 1000.0, "epsilon": 0.0014,
        "smiyc_quirks": False,
    }
    smiyc = get_method("odin-smiyc")
    assert (smiyc.temperature, smiyc.epsilon, smiyc.smiyc_quirks) == (3.0, 1e-4, True)
    assert smiyc.needs_gradients
    assert not get_method("odin", epsilon=0).needs_gradients


def test_zero_epsilon_is_temperature_scaled_msp(model, images):
    out = get_method("odin", temperature=3.0, epsilon=0.0).score(model, images)
    with torch.no_grad():
        probs = torch.softmax(model(images).logits / 3.0, 1)
    np.testing.assert_allclose(out.scores.numpy(), 1 - probs.amax(1).numpy(), rtol=1e-6)


def test_chunks_give_each_image_its_own_gradient(model):
    generator = torch.Generator().manual_seed(2)
    images = torch.randn(3, 3, 4, 6, generator=generator, dtype=torch.float64)
    whole = get_method("odin", chunk=3).score(model, images)
    single = get_method("odin", chunk=1).score(model, images)
    torch.testing.assert_close(whole.scores, single.scores)
    torch.testing.assert_close(whole.prediction, single.prediction)


def test_runs_inside_inference_mode_and_leaves_the_model_untouched(model, images):
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():
        out = get_method("odin-smiyc").score(model, images)
    assert torch.isfinite(out.scores).all()
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])
