"""Counter-based dropout: a trial's masks do not depend on its pack, and they are dropout."""

import torch

from genodl_core.training.hashed_dropout import dropout_scale


def _scale(seeds, step=3, layer=0, rate=0.3, shape=(64, 50)):
    h = torch.zeros(len(seeds), *shape)
    return dropout_scale(h, rate, torch.tensor(seeds, dtype=torch.int64),
                         torch.tensor(step, dtype=torch.int64), layer)


def test_a_trial_draws_the_same_mask_alone_and_in_any_pack():
    alone = _scale([11])[0]
    assert torch.equal(_scale([5, 11, 7])[1], alone)
    assert torch.equal(_scale([11, 2])[0], alone)


def test_masks_drop_the_rate_and_scale_what_they_keep():
    scale = _scale([1, 2, 3], rate=0.3, shape=(200, 100))
    values = torch.unique(scale)
    assert len(values) == 2 and values[0] == 0 and torch.isclose(values[1], torch.tensor(1 / 0.7))
    assert abs((scale == 0).float().mean().item() - 0.3) < 0.01


def test_seeds_steps_and_layers_each_give_other_masks():
    reference = _scale([1])[0]
    for other in (_scale([2])[0], _scale([1], step=4)[0], _scale([1], layer=1)[0]):
        assert not torch.equal(other, reference)
