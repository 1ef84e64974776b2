"""The measuring tools of the benchmarks that CI cannot run in full (bench/peers.py needs fastai and Lightning)."""
import sys, threading
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parents[1] / 'bench'))
from peers import Terminal

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
