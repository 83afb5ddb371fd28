import torch
from torch import nn

from workbench.training import lr_schedule, train_epochs


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x = (torch.randn(40, 4),)
    y = torch.randint(0, 3, (40,))
    return model, x, y, torch.optim.SGD(model.parameters(), lr=0.1)


def _ce(out, labels, idx):
    return nn.functional.cross_entropy(out, labels)


def test_yields_each_epoch_in_eval_mode_and_the_loss_falls():
    model, x, y, opt = _setup()
    modes, losses = [], []
    for epoch, loss in train_epochs(model, x, y, _ce, opt, 5, 8, 0, lr_schedule("constant", 25)):
        modes.append(model.training)
        losses.append((epoch, loss))
    assert [e for e, _ in losses] == [1, 2, 3, 4, 5] and modes == [False] * 5
    assert losses[-1][1] < losses[0][1]


def test_same_seed_same_weights_and_the_global_rng_is_untouched():
    runs = []
    for _ in range(2):
        model, x, y, opt = _setup()
        state = torch.random.get_rng_state()
        list(train_epochs(model, x, y, _ce, opt, 2, 8, 7, lr_schedule("cosine", 10)))
        assert torch.equal(torch.random.get_rng_state(), state)
        runs.append(model[0].weight.detach().clone())
    assert torch.equal(runs[0], runs[1])


def test_cancel_stops_mid_epoch_without_yielding_and_after_step_runs_each_step():
    model, x, y, opt = _setup()
    steps = []
    out = list(train_epochs(model, x, y, _ce, opt, 3, 8, 0, lr_schedule("constant", 15),
                            after_step=lambda: steps.append(1), cancelled=lambda: len(steps) >= 3))
    assert out == [] and len(steps) == 3 and not model.training


def test_the_schedule_factor_sets_the_learning_rate_per_step():
    model, x, y, opt = _setup()
    seen = []
    list(train_epochs(model, x, y, _ce, opt, 1, 10, 0, lr_schedule("cosine", 4),
                      after_step=lambda: seen.append(opt.param_groups[0]["lr"])))
    assert seen == [0.1 * lr_schedule("cosine", 4)(s) for s in range(1, 5)]
