from functools import partial
import pytest, torch
import torch.nn.functional as F
from torch import nn, optim
from mtlearn.sgd import *
from mtlearn.learner import TrainLearner
from test_learner import toy_dls

def grads_and_steps(opt_func, steps=4, seed=0):
    "Weights after each step of `opt_func` on a fixed regression, and the gradients seen."
    torch.manual_seed(seed)
    w = nn.Parameter(torch.randn(5))
    opt, x, y = opt_func([w]), torch.randn(20, 5), torch.randn(20)
    ws, gs = [w.detach().clone()], []
    for _ in range(steps):
        F.mse_loss(x@w, y).backward()
        gs.append(w.grad.clone())
        opt.step()
        opt.zero_grad()
        ws.append(w.detach().clone())
    return ws, gs

def test_momentum_and_rmsprop_follow_their_formulas():
    ws, gs = grads_and_steps(partial(Momentum, lr=0.1, mom=0.8))
    avg = torch.zeros(5)
    for w0, w1, g in zip(ws, ws[1:], gs):
        avg = 0.8*avg + 0.2*g
        torch.testing.assert_close(w1, w0 - 0.1*avg)
    ws, gs = grads_and_steps(partial(RMSProp, lr=0.01, sqr_mom=0.9, eps=1e-5, wd=0.1))
    sqr = gs[0]**2
    for w0, w1, g in zip(ws, ws[1:], gs):
        sqr = 0.9*sqr + 0.1*g**2
        torch.testing.assert_close(w1, w0*(1 - 0.01*0.1) - 0.01*g/(sqr.sqrt() + 1e-5))

def test_adam_bias_correction_and_state_not_on_params():
    ws, gs = grads_and_steps(partial(Adam, lr=0.01, beta1=0.9, beta2=0.99, eps=1e-5))
    m = v = torch.zeros(5)
    for i, (w0, w1, g) in enumerate(zip(ws, ws[1:], gs)):
        m, v = 0.9*m + 0.1*g, 0.99*v + 0.01*g**2
        torch.testing.assert_close(w1, w0 - 0.01*(m/(1-0.9**(i+1)))/((v/(1-0.99**(i+1))) + 1e-5).sqrt())
    p = nn.Parameter(torch.ones(2)); p.grad = torch.ones(2)
    opt = Adam([p], lr=0.1); opt.step()
    assert not hasattr(p, 'avg') and set(opt.state[p]) == {'avg', 'sqr_avg'}

def test_hand_written_optimisers_train_in_a_learner():
    for opt in (SGD, Momentum, RMSProp, Adam):
        learn = TrainLearner(nn.Linear(3, 2), toy_dls(n=64), F.cross_entropy, lr=0.05, opt_func=opt)
        w = learn.model.weight.detach().clone()
        learn.fit(1)
        assert not torch.equal(w, learn.model.weight) and torch.isfinite(learn.model.weight).all()

def test_bad_arguments():
    with pytest.raises(ValueError, match='`lr` should be positive; found lr = 0'): SGD([nn.Parameter(torch.ones(1))], lr=0)
    with pytest.raises(ValueError, match='`wd`'): Adam([nn.Parameter(torch.ones(1))], lr=0.1, wd=-1)
    with pytest.raises(TypeError, match='`RecorderCB` records `lr`.*found lr=0.1'): RecorderCB(lr=0.1)
    with pytest.raises(TypeError, match='`sched` should be a callable'): BatchSchedCB(3)
    learn = TrainLearner(nn.Linear(3, 2), toy_dls(), F.cross_entropy, cbs=[BatchSchedCB(partial(optim.lr_scheduler.StepLR, 1, 2))])
    w = learn.model.weight.detach().clone()
    with pytest.raises(TypeError, match=r'`sched` should accept the optimiser as its only argument'): learn.fit(1)
    assert torch.equal(w, learn.model.weight)

def test_sched_lrs_and_one_cycle_records():
    import matplotlib; matplotlib.use('Agg')
    opt = optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.)
    lrs = sched_lrs(optim.lr_scheduler.StepLR(opt, 2, gamma=0.5), 4)
    assert lrs == [1., 1., 0.5, 0.5, 0.25]
    learn = TrainLearner(nn.Linear(3, 2), toy_dls(n=16), F.cross_entropy, opt_func=optim.AdamW)
    learn.fit_one_cycle(2, 1e-2)
    lr, mom = learn.recorder.recs['lr'], learn.recorder.recs['mom']
    assert len(lr) == 8 and max(lr) == pytest.approx(1e-2, rel=0.05) and mom[0] == pytest.approx(0.95) and min(mom) >= 0.85 - 1e-9

def test_gradient_clip_reads_nothing_on_the_host_and_checks_its_argument():
    from mtlearn.learner import CountSyncs
    from mtlearn.sgd import GradientClip
    m = torch.nn.Linear(4, 3)
    m(torch.randn(5, 4)).pow(2).sum().mul(100).backward()
    learn = TrainLearner(m, toy_dls(n=16), F.mse_loss)  # no scaler: `unscale_` has nothing to do
    with CountSyncs() as c: GradientClip(0.1).before_step(learn)
    assert c.n == 0
    torch.testing.assert_close(torch.cat([p.grad.flatten() for p in m.parameters()]).norm(), torch.tensor(0.1))
    with pytest.raises(ValueError, match='`max_norm` should be a number > 0; found 0'): GradientClip(0)
