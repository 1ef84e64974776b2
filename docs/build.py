"""Build mtlearn's documentation site from the notebooks, with MkDocs (Material theme, mkdocs-jupyter, mkdocstrings):
the README as the home page, one page per chapter with its stored outputs and plots, the measurements
(docs/performance.md), one API page per module.

    pip install -e ".[docs]" && python docs/build.py        # writes site/; open site/index.html

nbdev's own site needs Quarto, which cannot be installed everywhere; this needs only packages from PyPI.
The notebooks are shown as they are stored (with the outputs computed when they were run), not re-executed.
"""
from __future__ import annotations
import argparse, json, os, re, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def _title(nb, default):
    "The notebook's first markdown heading."
    for c in nb['cells']:
        if c['cell_type'] == 'markdown':
            m = re.search(r'^#\s+(.+)$', ''.join(c['source']), re.M)
            if m: return m.group(1).strip()
    return default

def _for_reading(nb):
    "The notebook as a reader sees it: `#| hide` cells dropped, `#|` directive lines removed."
    cells = []
    for c in nb['cells']:
        src = ''.join(c['source'])
        if c['cell_type'] == 'code':
            if re.search(r'^#\|\s*(hide|default_exp)\b', src, re.M): continue
            src = '\n'.join(l for l in src.splitlines() if not l.startswith('#|')).strip('\n')
            if not src and not c.get('outputs'): continue
        cells.append({**c, 'source': src})
    return {**nb, 'cells': cells}

def _modules():
    "The package's modules, from nbdev's index."
    from mtlearn._modidx import d
    return sorted(m.split('.', 1)[1] for m in d['syms'] if m != 'mtlearn.all')  # (`all` re-exports the others)

# The API pages: each class with its constructor's signature; the modules imported and inspected (not only read), so
# that the methods `@patch` adds to a class (`Learner.fit_one_cycle`, `Learner.save`) are listed under it
API_OPTIONS = {'show_source': False, 'show_root_heading': False, 'force_inspection': True, 'merge_init_into_class': True,
               'separate_signature': True, 'show_signature_annotations': True, 'members_order': 'source',
               'show_if_no_docstring': False, 'filters': ['!^_']}

def _own(m):
    "The names module `mtlearn.m` defines itself (its `__all__` less what it re-exports), for its API page."
    import importlib
    mod = importlib.import_module(f'mtlearn.{m}')
    return [n for n in mod.__all__ if getattr(getattr(mod, n), '__module__', mod.__name__) == mod.__name__]

def write_search_index(out):
    "Turn the search plugin's JSON index into the script the search box reads (a fetch is refused from disk)."
    docs = json.loads((out/'search'/'search_index.json').read_text())['docs']
    strip = lambda t: re.sub(r'\s+', ' ', re.sub(r'<[^>]+>', ' ', t)).strip()
    items = [{'location': d['location'], 'title': strip(d['title']), 'text': strip(d['text'])[:3000]} for d in docs
             if d.get('location') is not None]
    (out/'assets'/'search_index.js').write_text('window.MTLEARN_SEARCH = ' + json.dumps(items) + ';\n')
    return len(items)

def prepare(src):
    "Write the site's sources to `src`; return the MkDocs configuration."
    if src.exists(): shutil.rmtree(src)
    (src/'chapters').mkdir(parents=True); (src/'api').mkdir()
    readme = (ROOT/'README.md').read_text()
    (src/'index.md').write_text(readme)
    shutil.copy(ROOT/'docs'/'performance.md', src/'performance.md')  # the measurements, in full
    shutil.copytree(ROOT/'docs'/'assets', src/'assets')  # the search box and the style
    (src/'assets'/'search_index.js').write_text('window.MTLEARN_SEARCH = [];\n')  # (filled in after the build)
    for img in re.findall(r'\]\((nbs/images/[^)]+)\)', readme):
        (src/img).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT/img, src/img)
    chapters = []
    for p in sorted((ROOT/'nbs').glob('*.ipynb')):
        nb = json.loads(p.read_text())
        (src/'chapters'/p.name).write_text(json.dumps(_for_reading(nb)))
        chapters.append({_title(nb, p.stem): f'chapters/{p.name}'})
    api = []
    for m in _modules():
        (src/'api'/f'{m}.md').write_text(f'# mtlearn.{m}\n\n::: mtlearn.{m}\n    options:\n      members: {_own(m)}\n')
        api.append({f'mtlearn.{m}': f'api/{m}.md'})
    return {
        'site_name': 'mtlearn', 'site_description': 'A fastai-style Learner and callbacks for PyTorch, with first-class multi-task learning',
        'docs_dir': str(src), 'use_directory_urls': False,  # plain .html files: the site works opened from disk, without a server
        'theme': {'name': 'material', 'features': ['navigation.sections']},
        'nav': [{'Home': 'index.md'}, {'Chapters': chapters}, {'Performance': 'performance.md'}, {'API': api}],
        'extra_javascript': ['assets/search_index.js', 'assets/mtsearch.js'], 'extra_css': ['assets/mtlearn.css'],
        # ('search' writes the index that `write_search_index` turns into a script)
        'plugins': ['search', {'mkdocs-jupyter': {'execute': False, 'include_source': True}},
                    {'mkdocstrings': {'handlers': {'python': {'paths': [str(ROOT)], 'options': API_OPTIONS}}}}],
        'markdown_extensions': ['admonition', 'tables', 'pymdownx.superfences'],
        'validation': {'links': {'not_found': 'warn', 'absolute_links': 'warn', 'unrecognized_links': 'warn'}}}

def build(out=ROOT/'site', strict=True):
    "Build the site into `out`; with `strict`, a warning (a broken link among them) fails the build."
    src = ROOT/'_docs_src'
    cfg = prepare(src)
    cfg_path = src.parent/'_mkdocs.yml'
    cfg_path.write_text(json.dumps(cfg, indent=1))  # JSON is YAML
    cmd = [sys.executable, '-m', 'mkdocs', 'build', '-q', '-f', str(cfg_path), '-d', str(Path(out).resolve())] + (['--strict'] if strict else [])
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, 'NO_MKDOCS_2_WARNING': '1'})  # (Material's notice about its successor)
    write_search_index(Path(out).resolve())
    return Path(out)

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', default=str(ROOT/'site'), help='folder for the site (default site/)')
    ap.add_argument('--no-strict', action='store_true', help='keep going on warnings such as broken links')
    a = ap.parse_args()
    print('site written to', build(Path(a.out), strict=not a.no_strict)/'index.html')
