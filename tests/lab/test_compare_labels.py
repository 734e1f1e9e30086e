"""What compare shows a reader: seeds counted in words, time budgets in whole seconds."""

from charlm.lab.compare_config import CompareConfig
from charlm.lab.compare_plots import seeds
from charlm.training.fit import TrainConfig


def test_seeds_are_counted_in_words():
    assert (seeds(1), seeds(2), seeds(0)) == ("1 seed", "2 seeds", "0 seeds")


def test_a_time_budget_is_whole_seconds():
    config = CompareConfig(train=TrainConfig(max_time=1.6381, max_steps=None))
    assert config.budget == (98, "s") and isinstance(config.budget[0], int)
    assert CompareConfig(train=TrainConfig(max_steps=700)).budget == (700, "step")


def test_compare_keeps_its_own_optimiser_defaults():
    t = CompareConfig().train
    assert (t.lr, t.weight_decay, t.precision, t.batch_size) == (6e-3, 0.0, "32-true", 32)
