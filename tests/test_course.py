"""The fast.ai course's notebooks run on mtlearn (see course_harness.py). They are not part of this repository: set
MTLEARN_COURSE22P2 to a checkout of github.com/fastai/course22p2 to run these tests; without it they are skipped."""
import os, subprocess, sys
from pathlib import Path
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from course_harness import NOTEBOOKS, rewrite, check_signature, export_cell, _tv_line
import ast, re

COURSE = os.environ.get('MTLEARN_COURSE22P2')

@pytest.mark.skipif(not COURSE, reason='MTLEARN_COURSE22P2 (a checkout of fastai/course22p2) is not set')
@pytest.mark.parametrize('module', list(NOTEBOOKS))
def test_course_notebook_runs_on_mtlearn(module):
    nb = NOTEBOOKS[module]
    r = subprocess.run([sys.executable, str(HERE/'course_harness.py'), COURSE, nb, '--one'], capture_output=True, text=True,
                       timeout=1800, env={**os.environ, 'MPLBACKEND': 'Agg'})
    fails = [l for l in r.stdout.splitlines() if ' FAIL ' in l]
    assert r.returncode == 0, f'{nb}: ' + '\n'.join(fails or r.stdout.splitlines()[-20:] + r.stderr.splitlines()[-20:])

# The harness's own logic, on sources written here (these run everywhere)
def test_rewrite_makes_only_the_course_users_changes():
    src = "from miniai.learner import *\nfrom miniai.training import *\ndls = DataLoaders.from_dd(tds, bs, num_workers=4)\ndsd = load_dataset(name)\nimport nbdev; nbdev.nbdev_export()"
    out = rewrite(src)
    assert 'from mtlearn.learner import *' in out and 'from miniai.training import *' in out  # (no mtlearn counterpart)
    assert 'num_workers=0' in out and '_course_load_dataset(name)' in out and 'nbdev_export' not in out

def test_torchvision_imports_go_to_the_stand_in():
    line = 'import torchvision.transforms.functional as TF,torch.nn.functional as F'
    assert _tv_line(re.match(r'^(\s*)(import|from) (.*)$', line)) == 'TF = _course_tv.transforms.functional; import torch.nn.functional as F'
    assert _tv_line(re.match(r'^(\s*)(import|from) (.*)$', 'from torchvision import transforms')) == 'transforms = _course_tv.transforms'

def _fn(src): return ast.parse(src).body[0]

def test_signature_check_finds_what_a_course_call_would_trip_on():
    def ours(ni, nf, ks=3, stride=2, act=True, extra=None): pass
    assert check_signature('f', _fn('def f(ni, nf, ks=3, stride=2, act=True): pass'), ours) == []
    def moved(nf, ni, ks=3, stride=2, act=True): pass
    assert any('parameter 1 is `ni`' in p for p in check_signature('f', _fn('def f(ni, nf, ks=3, stride=2, act=True): pass'), moved))
    def other_default(ni, nf, ks=5): pass
    assert any('defaults to 3' in p for p in check_signature('f', _fn('def f(ni, nf, ks=3): pass'), other_default))
    def missing(ni): pass
    assert any('`nf` is missing' in p for p in check_signature('f', _fn('def f(ni, nf): pass'), missing))
    def required_extra(ni, nf, wd): pass
    assert any('`wd` is required here' in p for p in check_signature('f', _fn('def f(ni, nf): pass'), required_extra))

def test_export_cells_take_their_names_from_mtlearn():
    ns = {}
    assert export_cell('def conv(ni, nf, ks=3, stride=2, act=True): pass\ndef_device = "cpu"', 'conv', ns) == []
    import mtlearn.conv
    assert ns['conv'] is mtlearn.conv.conv and ns['def_device'] == mtlearn.conv.def_device
    probs = export_cell('def no_such_helper(x): pass', 'conv', {})
    assert probs == ['miniai.conv.no_such_helper is missing from mtlearn.conv']
