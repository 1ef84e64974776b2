"""The measuring tools of the benchmarks that CI cannot run in full (bench/peers.py needs fastai and Lightning)."""
import sys, threading
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parents[1] / 'bench'))
from peers import Terminal
import pytest

def test_the_terminal_is_a_tty_drained_by_its_writer():
    "Progress bars see a terminal; what they write is read back by the writer, so even a write far larger than the pseudo-terminal's buffer returns, with no thread draining it."
    term = Terminal()
    assert term.file.isatty()
    done = threading.Event()
    def write():
        with term as out:
            assert sys.stdout is out and sys.stderr is out
            out.write('\r' + 'x' * 200_000 + '\n')  # (a pty holds about 4 KB: an undrained write of this size never returns)
        done.set()
    t = threading.Thread(target=write, daemon=True); t.start()
    assert done.wait(10), 'the write blocked: the terminal is not drained'
    assert sys.stdout is not term.file  # restored on exit

@pytest.mark.slow  # a benchmark in a subprocess: run by the test command (`--runslow`)
def test_the_batch_profile_runs_and_lists_mtlearns_functions():
    "bench/profile_batch.py (quoted in the README) still runs, and what it lists is mtlearn's code."
    import subprocess
    root = Path(__file__).parents[1]
    out = subprocess.run([sys.executable, 'bench/profile_batch.py', '--top', '3'], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert any(l.startswith('hand loop ') and 'TrainLearner' in l for l in lines), out.stdout
    listed = [l for l in lines if 'µs/batch  ' in l]  # (the listing's lines: time, two spaces, file:line function)
    assert len(listed) == 3 and all('.py:' in l for l in listed), out.stdout

@pytest.mark.slow  # a benchmark in a subprocess: run by the test command (`--runslow`)
def test_the_interleaving_cost_runs_at_both_thread_counts():
    "bench/interleave_cost.py (quoted in the README) still runs, and times the hook alone and interleaved at 2 threads and at 1."
    import subprocess
    root = Path(__file__).parents[1]
    out = subprocess.run([sys.executable, 'bench/interleave_cost.py', '--reps', '1', '--n_train', '2048'], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [l.split() for l in out.stdout.splitlines() if l.split() and l.split()[0] in ('1', '2')]
    assert [r[0] for r in rows] == ['2', '1'], out.stdout
    for threads, alone, interleaved, ratio in rows:
        assert float(alone) > 0 and float(interleaved) > 0
        assert abs(float(interleaved) / float(alone) - float(ratio)) < 0.01, out.stdout

def test_crossover_and_in_turn_bill_each_side_its_own_time_from_one_initial_model():
    "Both timings start the two sides from copies of one model, and give each function its own seconds: crossover's mean over the two thread orders, in_turn's run."
    import time, torch
    from torch import nn
    from mtlearn.datasets import DataLoaders
    from learner_overhead import crossover, in_turn
    batches = [(torch.zeros(2, 3), torch.zeros(2))] * 5
    dls = DataLoaders(batches, batches[:1])
    seen = []
    def work(pause):
        def f(model, dls):
            seen.append(model.weight.detach().clone())
            for _ in dls.train: time.sleep(pause)
            for _ in dls.valid: pass
        return f
    make = lambda: nn.Linear(3, 1)
    for timing in (lambda a, b: crossover(a, b, make, dls, seed=1), lambda a, b: in_turn(a, b, make, dls, seed=1, first=1)):
        seen.clear()
        ta, tb = timing(work(0.002), work(0.02))  # b waits 18 ms more per batch: 90 ms more per run
        assert 0.07 < tb - ta < 0.2, (ta, tb)
        assert len(seen) in (2, 4) and all(torch.equal(w, seen[0]) for w in seen)
