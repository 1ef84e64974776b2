import os, subprocess, sys
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
    "--tasks multi-fashion trains the two-task model with the named aggregator and writes the task plots."
    env = dict(os.environ, MTLEARN_CACHE=str(tmp_path/'cache'), MPLBACKEND='Agg')
    r = subprocess.run(['mtlearn-train', '--tasks', 'multi-fashion', '--aggregator', 'upgrad', '--epochs', '1', '--n_train', '1200',
                        '--data', str(SAMPLE_FMNIST), '--out', str(tmp_path/'out')], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert 'acc_left' in r.stdout and 'acc_right' in r.stdout
    assert sorted(p.name for p in (tmp_path/'out').iterdir()) == ['task_losses.png', 'task_weights.png']

def test_train_multitask_bad_arguments():
    from mtlearn.cli import train_multitask
    with pytest.raises(ValueError, match='`aggregator` should be one of mean, mgda, sdmgrad, upgrad'): train_multitask(epochs=1, aggregator='cagrad')

def test_flags_are_the_same_whatever_fastcore(capsys):
    from mtlearn.cli import _parser, main
    for flag in ('--n_train', '--n-train'): assert _parser().parse_args([flag, '600']).n_train == 600
    assert _parser().parse_args(['--no-lr-find']).no_lr_find and _parser().parse_args(['--no_lr_find']).no_lr_find
    assert _parser().parse_args(['--tasks', 'multi-fashion', '--lr', '0.01']).lr == 0.01  # no longer turned into 1e-3
    with pytest.raises(SystemExit, match='mtlearn-train: `epochs` should be a positive int; found epochs = 0'): main(['--epochs', '0'])
    with pytest.raises(SystemExit, match='mtlearn-train: `device`'): main(['--device', 'gpu'])
    with pytest.raises(SystemExit): main(['--aggregator', 'foo'])
    assert "invalid choice: 'foo'" in capsys.readouterr().err

def test_multi_task_flags_without_tasks_are_refused(capsys):
    "Issue 27: `--aggregator upgrad` without `--tasks` was ignored, and the single-task run overwrote ./out."
    from mtlearn.cli import main
    with pytest.raises(SystemExit) as e: main(['--aggregator', 'upgrad', '--epochs', '1'])
    assert e.value.code == 2 and '--aggregator applies only to a multi-task run: add --tasks multi-fashion' in capsys.readouterr().err
