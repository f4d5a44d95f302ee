"""CG-Aug on Mask2Former: the OOD head W°, its score, and the two training stages (what each
stage trains, the segmentation staying put in stage 1), through the ``cgaug`` method."""

import pytest
import torch

from ood_bench.adapters import get_dataset
from ood_bench.baselines import get_method
from ood_bench.baselines.outlier_exposure import synthetic_outliers
from ood_bench.cgaug.mask2former import SYNTHETIC, score_mask2former, with_ood_head
from ood_bench.errors import OodBenchError
from ood_bench.models import create_model


def fitted(model, steps: int) -> tuple:
    """The ``cgaug`` method fitted on 4 synthetic 32×64 frames; also returns the steps run."""
    done = []
    method = get_method("cgaug", recipe="synthetic")
    method.fit(model, get_dataset("synth-cityscapes", height=32, width=64), steps=steps,
               max_frames=4, outliers=synthetic_outliers(32, 64), on_step=done.append)
    return method, done


def test_ood_head_starts_as_the_class_head(m2f, images):
    tuned = with_ood_head(m2f)
    assert m2f.ood_head is None
    assert torch.equal(tuned.ood_head.weight, tuned.class_predictor.weight)
    with torch.no_grad():
        scores, prediction = score_mask2former(tuned, images)
        logits = m2f(images).logits
    torch.testing.assert_close(scores, 1 - logits.amax(1))  # = Mask2Anomaly's score
    assert torch.equal(prediction, logits.argmax(1))


def test_ood_head_needs_a_mask2former():
    deeplab = create_model("deeplabv3plus-small", num_classes=19, width=8)
    with pytest.raises(OodBenchError, match="needs a Mask2Former model"):
        with_ood_head(deeplab)


def test_stage_one_trains_only_the_ood_head(m2f, images):
    method, done = fitted(m2f, steps=1)  # 1 step in all: stage 1 only
    assert done == [1]
    before = m2f.state_dict()
    changed = {k for k, v in method.model.state_dict().items()
               if k not in before or not torch.equal(v, before[k])}
    assert changed == {"ood_head.weight", "ood_head.bias"}
    out = method.score(m2f, images)
    with torch.no_grad():
        assert torch.equal(out.prediction, m2f(images).logits.argmax(1))
        expected, _ = score_mask2former(method.model, images)
    torch.testing.assert_close(out.scores, expected)
    assert out.scores.std() > 0


def test_stage_two_trains_everything_but_backbone_statistics(m2f):
    method, done = fitted(m2f, steps=4)  # split like the recipe: 2 + 2
    assert done == [1, 2, 1, 2]
    before = m2f.state_dict()
    tuned = method.model.state_dict()
    backbone = "pixel_level_module.encoder."
    stats = [k for k in before if k.startswith(backbone) and "running" in k]
    weights = [k for k in before if k.startswith(backbone) and k.endswith("weight")]
    assert stats and all(torch.equal(tuned[k], before[k]) for k in stats)
    assert any(not torch.equal(tuned[k], before[k]) for k in weights)
    assert not torch.equal(tuned["class_predictor.weight"], before["class_predictor.weight"])


def test_recipes_follow_the_m2f_config():
    from ood_bench.cgaug.mask2former import REAL

    assert REAL.margins == SYNTHETIC.margins == (0.7, 0.5, 0.2)
    assert (REAL.stage1_steps, REAL.stage2_steps) == (4 * 371, 45 * 371)
    assert (REAL.stage1_lr, REAL.stage2_lr, REAL.stage2_weight_decay) == (1e-4, 1e-5, 0.05)
    assert (REAL.class_weight, REAL.mask_weight, REAL.dice_weight) == (5.0, 10.0, 10.0)
    shortened = SYNTHETIC.with_total_steps(4)
    assert (shortened.stage1_steps, shortened.stage2_steps) == (2, 2)
