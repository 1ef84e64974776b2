import io, math, warnings
import pytest, torch
import torch.nn.functional as F
from torch import nn, optim
from torcheval.metrics import MulticlassAccuracy
from mtlearn.datasets import DataLoaders, TensorDataLoader
from mtlearn.learner import *
from mtlearn.learner import _ConsoleBar
from mtlearn.sgd import RecorderCB

def toy_dls(n=8, bs=4, n_inp=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(n, 3, generator=g) for _ in range(n_inp)]
    y = torch.randint(0, 2, (n,), generator=g)
    return DataLoaders(TensorDataLoader(*xs, y, batch_size=bs), TensorDataLoader(*xs, y, batch_size=bs))

class Log(Callback):
    "Records every event it sees."
    events = ['before_fit', 'after_fit', 'cleanup_fit', 'before_epoch', 'after_epoch', 'cleanup_epoch', 'before_batch',
              'after_predict', 'after_loss', 'before_backward', 'after_backward', 'cleanup_backward', 'before_step',
              'after_step', 'cleanup_step', 'after_batch', 'cleanup_batch']
    def __init__(self, raise_at=None, exc=None): self.seen, self.raise_at, self.exc = [], raise_at, exc
    def __getattr__(self, nm):
        if nm not in self.events: raise AttributeError(nm)
        def f(learn):
            self.seen.append(nm)
            if nm == self.raise_at: raise self.exc
        return f

def learner(cbs=(), dls=None, **kw): return TrainLearner(nn.Linear(3, 2), dls or toy_dls(), F.cross_entropy, cbs=list(cbs), **kw)

def test_event_order():
    log = Log()
    learner([log], toy_dls(n=4)).fit(1)
    train = ['before_batch', 'after_predict', 'after_loss', 'before_backward', 'after_backward', 'cleanup_backward',
             'before_step', 'after_step', 'cleanup_step', 'after_batch', 'cleanup_batch']
    valid = ['before_batch', 'after_predict', 'after_loss', 'after_batch', 'cleanup_batch']
    epoch = lambda b: ['before_epoch', *b, 'after_epoch', 'cleanup_epoch']
    assert log.seen == ['before_fit', *epoch(train), *epoch(valid), 'after_fit', 'cleanup_fit']

@pytest.mark.parametrize('nm,exc,skipped', [
    ('before_backward', CancelBackwardException(), 'after_backward'),
    ('before_step', CancelStepException(), 'after_step'),
    ('before_batch', CancelBatchException(), 'after_batch'),
    ('before_epoch', CancelEpochException(), 'after_epoch'),
    ('before_fit', CancelFitException(), 'after_fit')])
def test_cancel_skips_after_but_runs_cleanup(nm, exc, skipped):
    log = Log(nm, exc)
    learn = learner([log])
    w = learn.model.weight.detach().clone()
    learn.fit(1)
    assert skipped not in log.seen and 'cleanup_' + skipped[6:] in log.seen and log.seen[-1] == 'cleanup_fit'
    assert torch.equal(learn.model.weight, w)  # every one of these cancels comes before any optimiser step

def test_exception_gets_note_and_cleanup_runs():
    log = Log('after_loss', KeyError('x'))
    extra = Log()
    learn = learner([log])
    with pytest.raises(KeyError) as e: learn.fit(1, cbs=[extra])
    assert e.value.__notes__ == ['(raised in Log.after_loss)']
    assert log.seen[-3:] == ['cleanup_batch', 'cleanup_epoch', 'cleanup_fit']
    assert extra not in learn.cbs  # fit-only callbacks are removed even on error

def test_bad_arguments():
    learn = learner()
    with pytest.raises(ValueError, match='`n_epochs` should be a non-negative int; found n_epochs = -1'): learn.fit(-1)
    with pytest.raises(ValueError, match='`n_epochs`'): learn.fit(1.5)
    with pytest.raises(ValueError, match=r'`dls` should have a `.train`'): TrainLearner(nn.Linear(3, 2), (0,), F.cross_entropy).fit(1)
    with pytest.raises(ValueError, match=r'`.valid`'): TrainLearner(nn.Linear(3, 2), type('D', (), {'train': []})(), F.cross_entropy).fit(1)
    with pytest.raises(ValueError, match='found device = .tpu9.'): DeviceCB('tpu9')
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='not available'): DeviceCB('cuda')

def test_loss_must_be_scalar_or_vector():
    learn = TrainLearner(nn.Linear(3, 2), toy_dls(), lambda p, y: p)
    with pytest.raises(ValueError, match=r'`loss_func` should return a scalar .* shape \(4, 2\)'): learn.fit(1)
    learn = TrainLearner(nn.Linear(3, 2), toy_dls(), lambda p, y: 1.0)
    with pytest.raises(ValueError, match='returned a float'): learn.fit(1)

def test_vector_loss_is_summed_and_kept():
    seen = []
    class S(Callback):
        def after_loss(self, learn): seen.append((learn.losses, learn.loss))
    vec = lambda p, y: torch.stack([F.cross_entropy(p, y), 2*F.cross_entropy(p, y)])
    torch.manual_seed(0); a = learner([S()], lr=0.1); a.loss_func = vec; a.fit(1, valid=False)
    torch.manual_seed(0); b = learner(lr=0.1); b.loss_func = lambda p, y: 3*F.cross_entropy(p, y); b.fit(1, valid=False)
    losses, loss = seen[0]
    assert losses.shape == (2,) and torch.allclose(loss, losses.sum())
    torch.testing.assert_close(a.model.weight, b.model.weight)  # trained on the sum

def test_train_cb_with_several_inputs_and_metrics():
    class Two(nn.Module):
        def __init__(self): super().__init__(); self.l = nn.Linear(6, 2)
        def forward(self, a, b): return self.l(torch.cat([a, b], 1))
    dls = toy_dls(n_inp=2)
    m = MetricsCB(accuracy=MulticlassAccuracy())
    Learner(Two(), dls, F.cross_entropy, cbs=[TrainCB(n_inp=2), m]).fit(1, train=False)
    a, b, y = dls.valid.tensors
    assert 0 <= m.all_metrics['accuracy'].compute() <= 1
    assert m.all_metrics['loss'].weights == len(y)

def test_each_training_step_has_one_owner():
    "`replaces` wins over the learner's own method; then the learner's; then the first callback, in order, with it."
    from mtlearn.accel import MixedPrecision
    class Two(nn.Module):
        def __init__(self): super().__init__(); self.l = nn.Linear(6, 2)
        def forward(self, a, b): return self.l(torch.cat([a, b], 1))
    class MyBackward(Callback):
        replaces = ('backward',)
        def __init__(self): self.n = 0
        def backward(self, learn):
            self.n += 1
            learn.loss.backward()
    class CountTrainCB(TrainCB):
        def backward(self, learn):
            self.n = getattr(self, 'n', 0) + 1
            super().backward(learn)
    mine, tcb = MyBackward(), CountTrainCB(n_inp=2)
    learn = Learner(Two(), toy_dls(n_inp=2), F.cross_entropy, cbs=[tcb, mine, MixedPrecision()])
    learn.fit(1, valid=False)
    assert mine.n == 2 and getattr(tcb, 'n', 0) == 0  # the replacing backward only, once per batch
    # TrainCB (order 0) before MixedPrecision (100): its steps, and its `n_inp`, are the fit's
    assert learn.step_owner('predict') is tcb and learn.n_inp == 2
    mp = MixedPrecision()
    learn = Learner(nn.Linear(3, 2), toy_dls(), F.cross_entropy, cbs=[mp])
    learn.fit(1)
    assert learn.step_owner('step') is mp
    learn = learner(cbs=[mine])
    learn.fit(1, valid=False)
    assert learn.step_owner('backward') is mine and learn.step_owner('step') is learn and mine.n == 4

def test_replacing_a_step_twice_or_a_misspelt_step_is_refused():
    class A(Callback):
        replaces = ('backward',)
        def backward(self, learn): learn.loss.backward()
    class B(A): pass
    with pytest.raises(ValueError, match='callbacks A, B each replace the training step `backward`'): learner(cbs=[A(), B()]).fit(1)
    class C(Callback): replaces = ('bakward',)
    with pytest.raises(ValueError, match=r"C.replaces should be a tuple of training steps.*found \('bakward',\)"):
        learner(cbs=[C()]).fit(1)
    class D(Callback): replaces = 'backward'
    with pytest.raises(ValueError, match="D.replaces should be a tuple"): learner(cbs=[D()]).fit(1)
    class E(Callback): replaces = ('step',)
    with pytest.raises(ValueError, match=r"E replaces step \(`replaces`\) but has no such method"): learner(cbs=[E()]).fit(1)

def test_metrics_match_direct_computation():
    dls = toy_dls(n=10, bs=3)
    learn = learner([m := MetricsCB(accuracy=MulticlassAccuracy())], dls)
    learn.fit(1, train=False)
    x, y = dls.valid.tensors
    with torch.no_grad(): p = learn.model(x)
    torch.testing.assert_close(m.all_metrics['accuracy'].compute(), (p.argmax(1) == y).float().mean())
    torch.testing.assert_close(m.all_metrics['loss'].compute().float(), F.cross_entropy(p, y))

def test_progress_console_is_clean():
    class TTY(io.StringIO):
        def isatty(self): return True
    for out in (io.StringIO(), TTY()):
        learner([MetricsCB(), ProgressCB(stream=out)], toy_dls(n=64, bs=4)).fit(2)
        text = out.getvalue()
        screen = []  # what a terminal shows: '\r' returns to the line start, later characters overwrite
        for line in text.split('\n'):
            cur = ''
            for part in line.split('\r'): cur = part + cur[len(part):]
            screen.append(cur.rstrip())
        screen = [l for l in screen if l]
        assert len(screen) == 5 and screen[0].split() == ['loss', 'epoch', 'phase']
        assert [l.split()[1:] for l in screen[1:]] == [['0', 'train'], ['0', 'eval'], ['1', 'train'], ['1', 'eval']]
        if not isinstance(out, TTY): assert '\r' not in text

def test_console_bar_draws_and_clears():
    class TTY(io.StringIO):
        def isatty(self): return True
    out = TTY()
    bar = _ConsoleBar(range(5), 'Epoch 1/1 ', out, every=0)
    assert list(bar) == list(range(5)) and len(bar) == 5
    assert '5/5' in out.getvalue()
    bar.clear()
    assert out.getvalue().endswith('\r')

def test_host_scalar_cpu():
    h = HostScalar()
    assert not h and str(h) == ''
    h.put(torch.tensor(1.23456))
    assert h and str(h) == '1.235' and h.get() == pytest.approx(1.23456)

def test_terminate_on_nan_stops_before_the_bad_step():
    class Poison(Callback):
        def after_loss(self, learn):
            if learn.iter == 1: learn.loss = learn.loss*float('nan')
    learn = learner([Poison(), TerminateOnNaNCB(), log := Log()], toy_dls(n=16))
    learn.fit(3)
    assert log.seen.count('after_step') == 1 and torch.isfinite(learn.model.weight).all()

def test_save_load_roundtrip_and_mismatch(tmp_path):
    learn = learner(opt_func=optim.Adam)
    learn.fit(1)
    learn.save(tmp_path/'m.pt')
    fresh = learner(opt_func=optim.Adam)
    fresh.load(tmp_path/'m.pt')
    torch.testing.assert_close(fresh.model.weight, learn.model.weight)
    fresh.fit(0)  # the saved optimiser state goes into the optimiser this fit creates
    assert fresh.opt.state_dict()['state'][0]['step'] == learn.opt.state_dict()['state'][0]['step']
    other = TrainLearner(nn.Linear(3, 5), toy_dls(), F.cross_entropy)
    w = other.model.weight.detach().clone()
    with pytest.raises(ValueError, match=r'parameter `weight` has shape \(2, 3\) there, \(5, 3\) in the model'): other.load(tmp_path/'m.pt')
    assert torch.equal(other.model.weight, w)
    with pytest.raises(ValueError, match='missing'): TrainLearner(nn.Sequential(nn.Linear(3, 2)), toy_dls()).load(tmp_path/'m.pt')
    with pytest.raises(FileNotFoundError, match='`path`'): other.load(tmp_path/'nope.pt')

def test_lr_find_restores_and_suggests():
    dls = toy_dls(n=400, bs=4)
    learn = learner(dls=dls, opt_func=optim.SGD)
    learn.fit(1, valid=False)
    opt, w = learn.opt, learn.model.weight.detach().clone()
    lr = learn.lr_find(plot=False, start_lr=1e-4, gamma=1.2)
    assert learn.opt is opt and torch.equal(learn.model.weight, w)
    lrs = learn.lr_finder.lrs
    assert lrs[0] == pytest.approx(1e-4) and lrs[1] == pytest.approx(1.2e-4) and lrs[0] <= lr <= lrs[-1]

def test_valley_on_a_known_curve():
    lrs = [10**(-5 + i/10) for i in range(60)]
    losses = [2.0]*10 + [2.0 - 0.05*i for i in range(30)] + [0.5 + 0.3*i for i in range(19)] + [math.nan]
    lr = valley(lrs, losses, beta=0.)
    assert lrs[10] < lr < lrs[40]  # inside the falling stretch
    with pytest.raises(ValueError, match='`losses`'): valley([1, 2], [math.nan, 1.])

def test_momentum_learner_keeps_scaled_grads():
    seen = []
    class Snap(Callback):
        def after_step(self, learn): self.g = learn.model.weight.grad.clone()
        def after_batch(self, learn):
            if learn.training: seen.append((self.g, learn.model.weight.grad.clone()))
    MomentumLearner(nn.Linear(3, 2), toy_dls(n=8), F.cross_entropy, lr=0.1, mom=0.5, cbs=[Snap()]).fit(1, valid=False)
    assert len(seen) == 2
    for g, kept in seen: torch.testing.assert_close(kept, 0.5*g)

def test_recorder_keeps_floats_only():
    rec = RecorderCB(lr=lambda cb: cb.pg['lr'], loss=lambda cb: cb.learn.loss)
    learner([rec]).fit(2)
    assert len(rec.recs['loss']) == 4 and all(type(v) is float for vs in rec.recs.values() for v in vs)

def test_default_device_preference(monkeypatch):
    import mtlearn.conv as conv
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    assert conv._pick_device() == 'cuda'
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(torch.backends.mps, 'is_available', lambda: True)
    assert conv._pick_device() == 'mps'
    monkeypatch.setattr(torch.backends.mps, 'is_available', lambda: False)
    assert conv._pick_device() == 'cpu'

def test_hand_written_optimizer():
    "`opt_func` may be any `(params, lr)` callable whose result has `step` and `zero_grad`, as in the course."
    class HandSGD:
        def __init__(self, params, lr): self.params, self.lr = list(params), lr
        def step(self):
            with torch.no_grad():
                for p in self.params: p -= self.lr*p.grad
        def zero_grad(self):
            for p in self.params: p.grad = None
    torch.manual_seed(0); a = learner(opt_func=HandSGD, lr=0.1); a.fit(1)
    torch.manual_seed(0); b = learner(opt_func=optim.SGD, lr=0.1); b.fit(1)
    torch.testing.assert_close(a.model.weight, b.model.weight)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # on 8 items the loss may not fall (no suggestion); the lrs below are what is tested
        a.lr_find(plot=False, start_lr=1e-3, gamma=2, max_epochs=20)  # no param_groups: the finder sets `opt.lr`
    lrs = a.lr_finder.lrs
    assert lrs[0] == pytest.approx(1e-3) and lrs[1] == pytest.approx(2e-3)

def test_progress_notebook_branch(monkeypatch):
    "In an IPython shell with IN_NOTEBOOK set, ProgressCB drives fastprogress's HTML bars, table and live loss plot."
    shell = pytest.importorskip('execnb.shell')
    import mtlearn.learner as ml
    from fastprogress.fastprogress import NBMasterBar, NBProgressBar
    # (set for this test only: the shell runs in this process)
    for k, v in (('IN_NOTEBOOK', True), ('master_bar', NBMasterBar), ('progress_bar', NBProgressBar)):
        monkeypatch.setattr(ml, k, v)
    sh = shell.CaptureShell()
    outs = sh.run("""
import torch, torch.nn.functional as F
from torch import nn
import mtlearn.learner as ml
from mtlearn.datasets import DataLoaders, TensorDataLoader
x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
dls = DataLoaders(TensorDataLoader(x, y, batch_size=4), TensorDataLoader(x, y, batch_size=4))
prog = ml.ProgressCB(plot=True)
ml.TrainLearner(nn.Linear(3, 2), dls, F.cross_entropy, cbs=[ml.MetricsCB(), prog]).fit(2)
""")
    assert sh.exc is None, sh.exc
    prog = sh.user_ns['prog']
    assert prog.nb and len(prog.losses) == 4 and len(prog.val_losses) == 2 and all(type(v) is float for v in prog.losses)
    html = ' '.join(str(o.get('data', {}).get('text/html', '')) for o in outs)
    assert '<progress' in html and '<table' in html

def test_a_plain_learner_without_training_steps_says_what_is_missing():
    "Issue 27: `Learner(...).fit()` without TrainCB failed with `AttributeError: loss`."
    learn = Learner(nn.Linear(3, 2), toy_dls(), F.cross_entropy)
    with pytest.raises(ValueError, match=r"no callback of this fit has predict, get_loss, backward, step, zero_grad: add TrainCB"):
        learn.fit(1)
    with pytest.raises(ValueError, match=r"has predict, get_loss: add TrainCB"): learn.fit(1, train=False)
    Learner(nn.Linear(3, 2), toy_dls(), F.cross_entropy, cbs=TrainCB()).fit(1)


def test_get_preds_any_loader_targets_losses_inputs_and_the_learner_left_as_it_was():
    "fastai's get_preds: eval mode, no gradients, any loader; nothing of the learner changes (history, optimiser, mode)."
    learn = learner(cbs=[MetricsCB(), ProgressCB()])
    learn.fit(1)
    hist, opt = list(learn.history), learn.opt
    learn.model.train()
    x = torch.randn(10, 3)
    y = torch.randint(0, 2, (10,))
    dl = TensorDataLoader(x, y, batch_size=4)
    preds, targs, losses, inps = learn.get_preds(dl, with_loss=True, with_input=True)
    with torch.no_grad(): want = learn.model.eval()(x)
    learn.model.train()
    torch.testing.assert_close(preds, want)
    assert torch.equal(targs, y) and torch.equal(inps, x) and not preds.requires_grad
    torch.testing.assert_close(losses, F.cross_entropy(want, y, reduction='none'))
    assert learn.history == hist and learn.opt is opt and learn.model.training  # left as it was
    p, = learn.get_preds(dl, with_targets=False)
    assert p.shape == (10, 2)
    p0, t0 = learn.get_preds()  # default: the validation loader
    assert torch.equal(t0, learn.dls.valid.tensors[1])
    one = learn.predict_item(x[0])
    torch.testing.assert_close(one, want[0])
    with pytest.raises(ValueError, match="`with_loss` needs a loss function that takes reduction='none'"):
        TrainLearner(nn.Linear(3, 2), toy_dls(), lambda p, y: F.cross_entropy(p, y)).get_preds(with_loss=True)

def test_summary_capture_preds_and_fit_one_cycle_need_no_other_import(tmp_path):
    "Issue 27: `summary` and `capture_preds` failed with a bare AttributeError unless mtlearn.augment was imported."
    import subprocess, sys
    code = """
import sys, torch, torch.nn.functional as F
from torch import nn
from mtlearn.learner import TrainLearner
from mtlearn.datasets import DataLoaders, TensorDataLoader
x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
learn = TrainLearner(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)), DataLoaders(TensorDataLoader(x, y, batch_size=8),
                     TensorDataLoader(x, y, batch_size=8)), F.cross_entropy)
learn.summary()
p, t = learn.capture_preds()
learn.fit_one_cycle(1, 0.01)
assert p.shape == (16, 2)
print('imported:', sorted(m for m in sys.modules if m.startswith('mtlearn.')))
"""
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert 'Tot params: 26' in r.stdout and '|Linear|(8, 3)|(8, 4)|16|' in r.stdout
    assert 'mtlearn.augment' not in r.stdout.split('imported:')[1]

def test_show_image_batch_leaves_the_learner_as_it_was():
    learn = learner(cbs=[MetricsCB()])
    learn.fit(1)
    hist, opt = list(learn.history), learn.opt
    import matplotlib; matplotlib.use('Agg')
    x = torch.rand(8, 1, 4, 4)
    learn.dls = DataLoaders(TensorDataLoader(x, torch.zeros(8, dtype=torch.long), batch_size=4), [])
    learn.show_image_batch(max_n=2)
    assert learn.history == hist and learn.opt is opt

def test_export_loads_in_a_fresh_process_without_mtlearn_and_predicts_from_raw_inputs(tmp_path):
    "Issue 26: a safe export (torch.export, no pickle of mtlearn objects); a multi-task model gives one output per task."
    import subprocess, sys
    from mtlearn.datasets import ByteNorm
    from mtlearn.multitask import MultiTaskModel, MultiTaskLoss
    torch.manual_seed(0)
    x = torch.randint(0, 256, (12, 1, 6, 6), dtype=torch.uint8)
    ys = torch.randint(0, 3, (12,)), torch.randint(0, 2, (12,))
    norm = ByteNorm(0.25, 0.5, flat=True)
    dls = DataLoaders(*(TensorDataLoader(x, *ys, batch_size=4, tfms=[norm]) for _ in range(2)))
    model = MultiTaskModel(nn.Sequential(nn.Linear(36, 8), nn.ReLU()), [nn.Linear(8, 3), nn.Linear(8, 2)])
    learn = TrainLearner(model, dls, MultiTaskLoss(F.cross_entropy, F.cross_entropy), lr=0.1)
    learn.fit(1)
    path = learn.export(tmp_path/'mt.pt2')
    (want_a, want_b), = learn.get_preds(with_targets=False)
    torch.save(x[:7], tmp_path/'x.pt')
    code = (f"import sys, torch; m = torch.export.load({str(path)!r}).module(); "
            f"torch.save(m(torch.load({str(tmp_path/'x.pt')!r})), {str(tmp_path/'out.pt')!r}); "
            "print(any(k.startswith('mtlearn') for k in sys.modules))")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == 'False'
    a, b = torch.load(tmp_path/'out.pt')
    torch.testing.assert_close(a, want_a[:7], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b, want_b[:7], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match='`example` should be a tensor batch of at least two items'):
        learn.export(tmp_path/'bad.pt2', example=[1, 2])
