"""MUAD: configurable OOD ids, 21/255 void, semantic = ids 0–18, split folders."""

import numpy as np
import pytest
from adapters_layouts import label_map, muad

from ood_bench.adapters import get_dataset
from ood_bench.errors import DataNotFoundError, OodBenchError

RAW = [0, 5, 18, 19, 20, 21, 255]
LABEL = label_map(RAW)


def expect(table):
    return np.vectorize(table.get)(LABEL).astype(np.uint8)


@pytest.mark.parametrize(("ood_ids", "ood"), [
    ((19, 20), {0: 0, 5: 0, 18: 0, 19: 1, 20: 1, 21: 255, 255: 255}),
    ([19], {0: 0, 5: 0, 18: 0, 19: 1, 20: 255, 21: 255, 255: 255}),
    ([16, 17, 18, 19, 20], {0: 0, 5: 0, 18: 1, 19: 1, 20: 1, 21: 255, 255: 255}),
])
def test_ood_ids_and_semantic(tmp_path, ood_ids, ood):
    images = muad(tmp_path, "test_ood", {"000001": LABEL})
    sample = get_dataset("muad-test-ood", tmp_path, ood_ids=ood_ids)[0]
    np.testing.assert_array_equal(sample.image, images["000001"])
    np.testing.assert_array_equal(sample.ood, expect(ood))
    semantic = {0: 0, 5: 5, 18: 18, 19: 255, 20: 255, 21: 255, 255: 255}
    np.testing.assert_array_equal(sample.semantic, expect(semantic))
    assert sample.name == "000001" and sample.domain is None


def test_train_split_in_devkit_folder_and_adverse_domain(tmp_path):
    muad(tmp_path, "train2", {"000000": LABEL, "000007": LABEL})
    assert len(get_dataset("muad-train", tmp_path)) == 2
    muad(tmp_path, "test_ood_high_adv", {"000003": LABEL})
    assert get_dataset("muad-test-ood-high-adv", tmp_path)[0].domain == "high-adv"


def test_challenge_split_has_its_own_folder(tmp_path, monkeypatch):
    muad(tmp_path / "MUAD_challenge", "test_sets/test_OOD", {"000002": LABEL})
    monkeypatch.setenv("OODBENCH_DATA", str(tmp_path))
    assert get_dataset("muad-challenge-test-ood")[0].name == "000002"


def test_errors(tmp_path):
    muad(tmp_path, "val", {"000001": label_map([0, 22])})
    with pytest.raises(OodBenchError, match=r"leftLabel.png.*unexpected label value\(s\) 22; "
                       r"expected MUAD ids 0\.\.21 or 255"):
        get_dataset("muad-val", tmp_path)[0]
    with pytest.raises(DataNotFoundError, match=r"missing folder .*test_id'"):
        get_dataset("muad-test-id", tmp_path)
    with pytest.raises(OodBenchError, match="ood_ids=\\[25\\]; expected a non-empty subset"):
        get_dataset("muad-val", tmp_path, ood_ids=[25])
    (tmp_path / "val" / "leftLabel" / "000001_leftLabel.png").unlink()
    with pytest.raises(DataNotFoundError, match="lack their leftLabel.*000001_leftLabel.png"):
        get_dataset("muad-val", tmp_path)
