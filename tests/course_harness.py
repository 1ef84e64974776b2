"""Run the fast.ai course's notebooks (course22p2, part 2 2022) against mtlearn, as a course user would.

    python tests/course_harness.py /path/to/course22p2 [11_initializing ...]

For each notebook that exports a course module (`miniai.X`), every code cell runs in order in one IPython shell, with
only the changes a course user makes on a machine like ours:
- `from miniai.X import *` becomes `from mtlearn.X import *` (the course's `miniai.training`, from the lesson before
  the Learner, has no mtlearn counterpart and is imported from the course checkout);
- the dataset is read locally: `load_dataset` gives `mtlearn.datasets.load_fashion_mnist()` cut to a few batches, and
  07's `mnist.pkl.gz` is written from the same images;
- without torchvision (it has no CPU build here), its names the notebooks use come from a stand-in built on mtlearn's
  equivalents (`to_tensor`, `hflip`, `RandomCrop` and `RandomHorizontalFlip` of a batch, `read_image`); cells that
  import a package that is not installed (timm, diffusers) are skipped, with the cells that use what they define;
- `torch.load` unpickles whole models (`weights_only=False`, the default before torch 2.6);
- data loaders use no worker processes, every fit runs one epoch (the LR finder runs until the loss diverges), and
  the diffusion notebook samples with 50 steps instead of 1,000.
An `#|export` cell is not run: the names it defines are taken from the mtlearn module of the same name instead, which
must have each of them, list the public ones in `__all__`, and accept the course's arguments (every parameter of the
course's function, in the same place, with the same default; extra parameters need defaults); private helpers are
checked only where the notebook's own cells call them. Where the course's stored output of a cell printed a model's
parameter total (its `summary`), the same cell must print the same total. A name, a signature, a total or a
cell that fails makes the notebook fail. Prints one line per cell; exit status 1 if anything failed.
"""
from __future__ import annotations
import argparse, ast, contextlib, gzip, importlib, io, importlib.util, inspect, json, os, pickle, re, subprocess, sys, tempfile, time, types
from pathlib import Path

NOTEBOOKS = {  # mtlearn module: the course notebook that exports the course module of that name
    'datasets': '05_datasets', 'conv': '07_convolutions', 'learner': '09_learner', 'activations': '10_activations',
    'init': '11_initializing', 'sgd': '12_accel_sgd', 'resnet': '13_resnet', 'augment': '14_augment', 'accel': '17_DDPM_v2'}
N_TRAIN, N_VALID, MAX_EPOCHS = 2048, 1024, 1
SMALLER = {  # notebook: (pattern, replacement) making a run small enough for the CPU, nothing else changed
    '17_DDPM_v2': [(r'\bn_steps\s*=\s*1000\b', 'n_steps=50'), (r'(betamin,betamax,n_steps = [\d.]+,[\d.]+,)1000', r'\g<1>50')]}  # 50 diffusion steps, not 1000

def _is_export(src): return re.match(r'\s*#\s*\|\s*export', src) is not None

def code_cells(nb_path):
    "The notebook's code cells as (index, source, stored text output)."
    nb = json.loads(Path(nb_path).read_text())
    text = lambda c: ''.join(''.join(o.get('text', '')) + ''.join(o.get('data', {}).get('text/plain', '')) + ''.join(o.get('data', {}).get('text/markdown', ''))
                             for o in c.get('outputs', []))
    return [(i, ''.join(c['source']), text(c)) for i, c in enumerate(nb['cells']) if c['cell_type'] == 'code']

def param_counts(text):
    "The parameter totals a cell printed (the course's `summary`: 'Tot params: 1228908')."
    return [int(n) for n in re.findall(r'Tot params:\s*(\d+)', text)]

class _Tee(io.StringIO):
    "Keeps what is written, and passes it on."
    def __init__(self, out): super().__init__(); self.out = out
    def write(self, s): self.out.write(s); return super().write(s)

def rewrite(src, nb_name=None):
    "A cell's source with the course user's changes: mtlearn imports, local data, no worker processes, no export call; smaller where `SMALLER` says."
    for pat, rep in SMALLER.get(nb_name, ()): src = re.sub(pat, rep, src)
    src = re.sub(r'^\s*import nbdev; nbdev\.nbdev_export\(\)\s*$', '', src, flags=re.M)
    src = re.sub(r'\bminiai\.(?!training\b)', 'mtlearn.', src)
    src = re.sub(r'\bnum_workers\s*=\s*[^,)\n]+', 'num_workers=0', src)
    src = re.sub(r'\bload_dataset\(', '_course_load_dataset(', src)
    src = re.sub(r'\bload_dataset_builder\(', '_course_dataset_builder(', src)
    src = re.sub(r'\btorch\.load\(', '_course_torch_load(', src)  # torch ≥ 2.6 loads weights only by default; the course pickles whole models
    if importlib.util.find_spec('torchvision') is None:
        src = re.sub(r'^(\s*)(import|from) (.*\btorchvision\b.*)$', _tv_line, src, flags=re.M)
    return src

def _tv_line(m):
    "An import line naming torchvision, rewritten to take those names from `_course_tv` (the stand-in) instead."
    indent, kind, rest = m.groups()
    out = []
    if kind == 'from':  # from torchvision[.a.b] import x, y as z
        mod, names = re.match(r'([\w.]+)\s+import\s+(.*)', rest).groups()
        base = '_course_tv' + mod[len('torchvision'):] if mod.startswith('torchvision') else None
        for n in names.split(','):
            nm, _, alias = n.strip().partition(' as ')
            out.append(f'{alias or nm} = {base}.{nm}' if base else f'from {mod} import {n.strip()}')
    else:  # import torchvision.a.b as T, torch.nn.functional as F
        for n in rest.split(','):
            nm, _, alias = n.strip().partition(' as ')
            if nm.startswith('torchvision'): out.append(f"{alias or nm} = _course_tv{nm[len('torchvision'):]}")
            else: out.append(f'import {n.strip()}')
    return indent + '; '.join(out)

def _torchvision_standin():
    "What the course's notebooks use of torchvision, from mtlearn's equivalents (torchvision has no CPU build here)."
    import PIL.Image, numpy as np, torch
    from mtlearn.datasets import to_tensor
    from mtlearn.augment import rand_crop, rand_flip
    class RandomCrop(torch.nn.Module):  # same-size crops of a padded batch, as the course uses it
        def __init__(self, size, padding=0): super().__init__(); self.size, self.padding = size, padding
        def forward(self, x):
            if x.shape[-1] != self.size: raise ValueError(f'the stand-in RandomCrop crops back to the input size only; found size {self.size} for {tuple(x.shape)}')
            return rand_crop(x, self.padding)
    class RandomHorizontalFlip(torch.nn.Module):
        def __init__(self, p=0.5): super().__init__(); self.p = p
        def forward(self, x): return rand_flip(x, self.p)
    read_image = lambda path: torch.from_numpy(np.array(PIL.Image.open(path).convert('RGB'))).permute(2, 0, 1).contiguous()
    ns = types.SimpleNamespace
    functional = ns(to_tensor=to_tensor, hflip=lambda x: x.flip(-1))
    return ns(transforms=ns(functional=functional, RandomCrop=RandomCrop, RandomHorizontalFlip=RandomHorizontalFlip), io=ns(read_image=read_image))

def _missing_package(src):
    "The first package `src` imports that is not installed, or None."
    for m in re.finditer(r'^\s*(?:from\s+([\w.]+)\s+import|import\s+([\w.]+))', src, flags=re.M):
        top = (m.group(1) or m.group(2)).split('.')[0]
        if importlib.util.find_spec(top) is None: return top
    return None

def _literal(node):
    if node is None: return inspect.Parameter.empty
    try: return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError): return _NOT_LITERAL

_NOT_LITERAL = object()  # a default such as `nn.ReLU`: its presence is checked, its value is not

def _course_params(fn):
    "The positional and keyword-only parameters of an AST function, as (name, default) lists."
    a = fn.args
    pos = a.posonlyargs + a.args
    defs = [None] * (len(pos) - len(a.defaults)) + list(a.defaults)
    return [(p.arg, _literal(d)) for p, d in zip(pos, defs)], [(p.arg, _literal(d)) for p, d in zip(a.kwonlyargs, a.kw_defaults)]

KNOWN_DIFFERENCES = {  # (name, parameter): why mtlearn's default differs from the course's, on purpose
    ('accel.AccelerateCB', 'mixed_precision'): "None: 'fp16' on CUDA, as the course, and 'bf16' where fp16 cannot run (the CPU)"}

def check_signature(qual, course_fn, ours):
    "Why `ours` cannot be called as the course calls `course_fn` (an AST function definition): a list of problems."
    try: ps = list(inspect.signature(ours).parameters.values())
    except (TypeError, ValueError): return []
    cpos, ckw = _course_params(course_fn)
    if cpos and cpos[0][0] == 'self' and not (ps and ps[0].name == 'self'): cpos = cpos[1:]  # a class: its __init__
    empty = inspect.Parameter.empty
    ours_pos = [p.name for p in ps if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    by_name = {p.name: p for p in ps}
    var_kw = any(p.kind == p.VAR_KEYWORD for p in ps)
    problems = []
    for i, (nm, _) in enumerate(cpos):
        if i < len(ours_pos) and ours_pos[i] != nm and nm in by_name:
            problems.append(f"{qual}: the course's parameter {i+1} is `{nm}`, here it is `{ours_pos[i]}`")
    for nm, d in cpos + ckw:
        p = by_name.get(nm)
        if p is None:
            if not var_kw: problems.append(f"{qual}: the course's parameter `{nm}` is missing")
            continue
        if d is empty or d is _NOT_LITERAL or (qual, nm) in KNOWN_DIFFERENCES: continue
        if p.default is empty: problems.append(f"{qual}: `{nm}` defaults to {d!r} in the course, and has no default here")
        elif not (type(p.default) is type(d) and p.default == d): problems.append(f"{qual}: `{nm}` defaults to {d!r} in the course, to {p.default!r} here")
    cnames = {nm for nm, _ in cpos + ckw}
    for p in ps:
        if p.name not in cnames and p.name != 'self' and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.default is empty:
            problems.append(f"{qual}: `{p.name}` is required here, and the course has no such parameter")
    return problems

def export_cell(src, modname, ns, used=None):
    "Take the names an `#|export` cell defines from `mtlearn.<modname>` into `ns`; run its imports. Returns problems. Private names only if in `used`."
    mod = importlib.import_module(f'mtlearn.{modname}')
    public = set(getattr(mod, '__all__', ()))
    problems = []
    tree = ast.parse(src)
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            code = rewrite(ast.unparse(node))
            if _missing_package(code): continue
            try: exec(compile(code, '<export-import>', 'exec'), ns)
            except Exception as e: problems.append(f"`{code}` failed: {type(e).__name__}: {e}")
            continue
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            deco = [ast.unparse(d) for d in node.decorator_list]
            if any(d in ('fc.patch', 'patch') for d in deco):  # a method added to a class: check it there
                a = node.args.args[0].annotation if node.args.args else None
                cls = ns.get(ast.unparse(a)) if a is not None else None
                ours = getattr(cls, node.name, None) if cls is not None else None
                if ours is None: problems.append(f"{ast.unparse(a) if a is not None else '?'}.{node.name} (a patched method in miniai.{modname}) is missing")
                else: problems += check_signature(f"{cls.__name__}.{node.name}", node, ours)
                continue
            names = [node.name]
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
        else: continue
        for nm in names:
            if nm.startswith('_') and used is not None and nm not in used:  # a private helper the notebook never calls: mtlearn's may differ
                if hasattr(mod, nm): ns[nm] = getattr(mod, nm)
                continue
            if not hasattr(mod, nm):
                problems.append(f"miniai.{modname}.{nm} is missing from mtlearn.{modname}"); continue
            if not nm.startswith('_') and nm not in public:
                problems.append(f"mtlearn.{modname}.{nm} exists but is not in its __all__, so `from mtlearn.{modname} import *` misses it")
            ours = getattr(mod, nm)
            ns[nm] = ours
            if isinstance(node, ast.FunctionDef): problems += check_signature(f"{modname}.{nm}", node, ours)
            if isinstance(node, ast.ClassDef):
                init = next((b for b in node.body if isinstance(b, ast.FunctionDef) and b.name == '__init__'), None)
                if init is not None: problems += check_signature(f"{modname}.{nm}", init, ours)
    return problems

def _setup(workdir, course):
    "The shell's namespace: local data in place of the hub, a torchvision stand-in if needed, one epoch per fit."
    import matplotlib; matplotlib.use('Agg')
    import numpy as np, torch
    from mtlearn import datasets as mds
    from mtlearn.learner import Learner
    sys.path.append(str(course))  # only for miniai.training, which mtlearn does not replace
    dd = mds.load_fashion_mnist()
    small = mds.DatasetDict({'train': dd['train'].select(range(N_TRAIN)), 'test': dd['test'].select(range(N_VALID))})
    def _course_load_dataset(name, *args, **kwargs):
        if name not in ('fashion_mnist', 'zalando-datasets/fashion_mnist'): raise ValueError(f"the harness has Fashion-MNIST only; asked for {name!r}")
        return small
    def _course_dataset_builder(name, *args, **kwargs):
        splits = {k: types.SimpleNamespace(name=k, num_examples=len(v)) for k, v in small.items()}
        return types.SimpleNamespace(info=types.SimpleNamespace(description='Fashion-MNIST (local copy)', features=small['train'].features, splits=splits))
    # lesson 07 reads MNIST from a pickle made in lesson 01; the same format, from the local Fashion-MNIST images
    (workdir/'data').mkdir(); (workdir/'models').mkdir()
    if (course/'nbs'/'images').is_dir(): (workdir/'images').symlink_to(course/'nbs'/'images')  # the course's pictures, read by lesson 07
    arr = lambda ds: (np.stack([np.asarray(im, dtype=np.float32).reshape(-1) / 255 for im in ds['image']]), np.asarray(ds['label']))
    with gzip.open(workdir/'data'/'mnist.pkl.gz', 'wb') as f: pickle.dump((arr(small['train']), arr(small['test']), arr(small['test'])), f)
    fit, lr_find, finding = Learner.fit, Learner.lr_find, []
    def _fit(self, n_epochs=1, *args, **kwargs): return fit(self, n_epochs if finding else min(n_epochs, MAX_EPOCHS), *args, **kwargs)
    def _lr_find(self, *args, **kwargs):  # on a few batches an epoch, the finder needs more epochs to reach a diverging lr
        finding.append(1)
        try: return lr_find(self, *args, **{'max_epochs': 100, **kwargs})
        finally: finding.pop()
    Learner.fit, Learner.lr_find = _fit, _lr_find
    return dict(_course_load_dataset=_course_load_dataset, _course_dataset_builder=_course_dataset_builder,
                _course_tv=_torchvision_standin(), _course_torch_load=lambda *a, **k: torch.load(*a, **{'weights_only': False, **k}))

def run_notebook(course, nb_name, log=print):
    "Run one course notebook; returns a list of failures (empty if it passed)."
    from IPython.core.interactiveshell import InteractiveShell
    course = Path(course)
    cells = code_cells(course/'nbs'/f'{nb_name}.ipynb')
    modname = next((m.group(1) for _, s, _ in cells if (m := re.search(r'#\s*\|\s*default_exp\s+(\w+)', s))), None)
    workdir = Path(tempfile.mkdtemp(prefix=f'course-{nb_name}-'))
    os.chdir(workdir)
    sh = InteractiveShell.instance(colors='nocolor')
    sh.run_line_magic('xmode', 'minimal')
    sh.user_ns.update(_setup(workdir, course))
    failures, skipped = [], []
    used = {w for _, src, _ in cells if not _is_export(src) for w in re.findall(r'\b\w+\b', src)}
    for i, src, stored in cells:
        if not src.strip() or re.match(r'\s*#\s*\|\s*default_exp', src): continue
        t0 = time.time()
        if _is_export(src):
            probs = export_cell(src, modname, sh.user_ns, used)
            for p in probs: log(f'  [{i}] FAIL {p}')
            failures += [f'cell {i}: {p}' for p in probs]
            log(f'  [{i}] export: names from mtlearn.{modname}' + ('' if probs else ' ok'))
            continue
        code = rewrite(src, nb_name)
        miss = _missing_package(code)
        if miss or any(re.search(rf'\b{re.escape(v)}\b', code) for v in skipped_vars(skipped)):
            skipped.append((i, miss or 'uses a skipped cell', code))
            log(f'  [{i}] skipped: {miss} is not installed' if miss else f'  [{i}] skipped: uses what a skipped cell defines')
            continue
        with contextlib.redirect_stdout(_Tee(sys.stdout)) as out: r = sh.run_cell(code, store_history=False, silent=False)
        err = r.error_before_exec or r.error_in_exec
        if err is None and param_counts(stored) and param_counts(out.getvalue()) != param_counts(stored):  # the course's models, parameter for parameter
            failures.append(msg := f'cell {i}: parameter totals {param_counts(out.getvalue())}, the course printed {param_counts(stored)}')
            log(f'  [{i}] FAIL {msg}')
            continue
        if err is not None:
            msg = f'{type(err).__name__}: {err}'
            failures.append(f'cell {i}: {msg}\n{code}')
            log(f'  [{i}] FAIL {msg}')
            continue
        log(f'  [{i}] ok ({time.time()-t0:.1f} s)')
    return failures, skipped

def skipped_vars(skipped):
    "Names assigned by skipped cells (a later cell using one of them is skipped too)."
    out = set()
    for _, _, code in skipped:
        try: tree = ast.parse(code)
        except SyntaxError: continue
        for node in tree.body:
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                    out |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
            elif isinstance(node, (ast.Import, ast.ImportFrom)): out |= {(a.asname or a.name).split('.')[0] for a in node.names}
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)): out.add(node.name)
    return out

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('course', help='a checkout of github.com/fastai/course22p2')
    ap.add_argument('notebooks', nargs='*', help=f"notebook names (default: all of {', '.join(NOTEBOOKS.values())})")
    ap.add_argument('--one', action='store_true', help='run the single notebook given in this process (used by the others)')
    a = ap.parse_args(argv)
    nbs = a.notebooks or list(NOTEBOOKS.values())
    if a.one:
        print(f'== {nbs[0]}', flush=True)
        failures, skipped = run_notebook(a.course, nbs[0], log=lambda s: print(s, flush=True))
        print(f'== {nbs[0]}: {len(failures)} failed, {len(skipped)} skipped', flush=True)
        return 1 if failures else 0
    bad = []
    for nb in nbs:  # a process per notebook: each starts from a fresh namespace, as a notebook does
        if subprocess.run([sys.executable, __file__, a.course, nb, '--one']).returncode: bad.append(nb)
    print('failed:', ', '.join(bad) if bad else 'none')
    return 1 if bad else 0

if __name__ == '__main__': sys.exit(main())
