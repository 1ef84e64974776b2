import os, re, subprocess, sys
import pytest
from mtlearn.datasets import SAMPLE_FMNIST
from mtlearn.cli import train

def test_mtlearn_train_command(tmp_path):
    "The installed console script trains on the shipped sample, prints the table and writes every plot."
    env = dict(os.environ, MTLEARN_CACHE=str(tmp_path/'cache'), MPLBACKEND='Agg')
    r = subprocess.run(['mtlearn-train', '--epochs', '1', '--bs', '500', '--data', str(SAMPLE_FMNIST), '--out', str(tmp_path/'out')],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0].startswith('LR finder: the learning rate grows') and out[1].startswith('LR finder: ')
    assert 'one-cycle schedule peaking at --lr 1.00e-02' in out[1]  # what the suggestion is for, next to the rate the run uses
    assert '\r' not in r.stdout  # a pipe gets lines, not a progress bar's carriage-return frames
    lines = [l.split() for l in out[2:]]
    assert lines[0] == ['accuracy', 'loss', 'epoch', 'phase'] and lines[1][2:] == ['0', 'train'] and lines[2][2:] == ['0', 'eval']
    assert 0.5 < float(lines[2][0]) <= 1  # even 3,000 images teach the CNN something in one epoch
    assert sorted(p.name for p in (tmp_path/'out').iterdir()) == ['color_dim.png', 'dead_chart.png', 'loss.png', 'lr_find.png', 'schedule.png', 'stats.png']

def test_train_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match='`epochs` should be a positive int; found epochs = 0'): train(epochs=0)
    with pytest.raises(ValueError, match='`device`'): train(epochs=1, device='nope')
    with pytest.raises(FileNotFoundError, match='`path` should be a folder'): train(epochs=1, data=tmp_path)

def test_mtlearn_train_multi_fashion(tmp_path):
    "--tasks multi-fashion trains the two-task model with the named aggregator (and its settings) and a loss weighting."
    env = dict(os.environ, MTLEARN_CACHE=str(tmp_path/'cache'), MPLBACKEND='Agg')
    r = subprocess.run(['mtlearn-train', '--tasks', 'multi-fashion', '--aggregator', 'cagrad:c=0.4', '--loss-weighting',
                        'dwa:T=2', '--epochs', '1', '--n_train', '1200', '--data', str(SAMPLE_FMNIST),
                        '--out', str(tmp_path/'out')], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert 'acc_left' in r.stdout and 'acc_right' in r.stdout
    assert sorted(p.name for p in (tmp_path/'out').iterdir()) == ['task_losses.png', 'task_weights.png']

def test_every_registered_method_is_reached_by_name_with_its_settings():
    "Issue 27: the CLI reached 4 of the aggregators and none of the loss weightings."
    from mtlearn import aggregators, loss_weighting
    from mtlearn.cli import AGGREGATORS, LOSS_WEIGHTINGS, make_method, _parser
    public = lambda mod, base: {n.lower() for n in mod.__all__ if isinstance(getattr(mod, n), type)
                                and issubclass(getattr(mod, n), base) and getattr(mod, n) is not base}
    assert set(AGGREGATORS) == public(aggregators, aggregators.Aggregator) - {'weightedaggregator'}
    assert set(LOSS_WEIGHTINGS) == public(loss_weighting, loss_weighting.LossWeighting) and len(LOSS_WEIGHTINGS) >= 8
    needs = {'constant': ':weights=(0.7,0.3)', 'cagrad': ':c=0.4', 'trimmedmean': ':trim_number=0', 'krum': ':n_byzantine=0',
             'fairgrad': ':alpha=1.0', 'crmogm': ':weighting=mgda'}
    for reg in (AGGREGATORS, LOSS_WEIGHTINGS):
        for name, cls in reg.items(): assert type(make_method(name + needs.get(name, ''), reg, 'x')) is cls
    agg = make_method('CAGrad:c=0.3, max_iters=20', AGGREGATORS, 'aggregator')
    assert agg.c == 0.3 and agg.max_iters == 20
    assert make_method('mgda:norm_type=l2', AGGREGATORS, 'aggregator').norm_type == 'l2'  # a bare word is text
    assert make_method('constant:weights=(0.7,0.3)', AGGREGATORS, 'aggregator').weights.tolist() == pytest.approx([0.7, 0.3])
    help_text = _parser().format_help()
    assert all(n in help_text for n in list(AGGREGATORS) + list(LOSS_WEIGHTINGS))

@pytest.mark.parametrize('spec, msg', [
    ('nope', "`aggregator` should be one of mean, sum, "),
    ('cagrad', 'CAGrad needs c: give cagrad:c=...'),
    ('cagrad:d=1', 'CAGrad has no setting d; its settings are c, '),
    ('cagrad:0.4', '`aggregator` settings should be key=value pairs after a colon'),
    ('cagrad:c=', '`aggregator` settings should be key=value pairs after a colon'),
    ('cagrad:c=-1', '`c` should be'),
])
def test_a_bad_method_spec_is_refused_naming_what_is_wrong(spec, msg):
    from mtlearn.cli import AGGREGATORS, make_method, main
    with pytest.raises(ValueError, match=re.escape(msg)): make_method(spec, AGGREGATORS, 'aggregator')
    with pytest.raises(SystemExit, match=re.escape('mtlearn-train: ' + msg)):
        main(['--tasks', 'multi-fashion', '--aggregator', spec, '--epochs', '1'])

def test_flags_are_the_same_whatever_fastcore(capsys):
    from mtlearn.cli import _parser, main
    for flag in ('--n_train', '--n-train'): assert _parser().parse_args([flag, '600']).n_train == 600
    assert _parser().parse_args(['--no-lr-find']).no_lr_find and _parser().parse_args(['--no_lr_find']).no_lr_find
    assert _parser().parse_args(['--tasks', 'multi-fashion', '--lr', '0.01']).lr == 0.01  # no longer turned into 1e-3
    with pytest.raises(SystemExit, match='mtlearn-train: `epochs` should be a positive int; found epochs = 0'): main(['--epochs', '0'])
    with pytest.raises(SystemExit, match='mtlearn-train: `device`'): main(['--device', 'gpu'])

def test_multi_task_flags_without_tasks_are_refused(capsys):
    "Issue 27: `--aggregator upgrad` without `--tasks` was ignored, and the single-task run overwrote ./out."
    from mtlearn.cli import main
    with pytest.raises(SystemExit) as e: main(['--aggregator', 'upgrad', '--epochs', '1'])
    assert e.value.code == 2 and '--aggregator applies only to a multi-task run: add --tasks multi-fashion' in capsys.readouterr().err
