"The documentation site: it builds with one command, and a real browser finds the home page, a chapter with its plots, and no broken link."
import html.parser, re, shutil, subprocess, sys, urllib.parse
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip('mkdocs', reason='the docs extra is not installed: pip install -e ".[docs]"')
pytest.importorskip('mkdocs_jupyter', reason='the docs extra is not installed: pip install -e ".[docs]"')
pytestmark = pytest.mark.slow  # the site's build and a browser: run by the test command (`--runslow`), skipped in quick runs
BROWSER = next((b for b in ('chromium', 'chromium-browser', 'google-chrome') if shutil.which(b)), None)

@pytest.fixture(scope='module')
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp('site')
    subprocess.run([sys.executable, str(ROOT/'docs'/'build.py'), '--out', str(out)], check=True, cwd=ROOT)
    return out

class _Links(html.parser.HTMLParser):
    def __init__(self): super().__init__(); self.links = []
    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ('href', 'src') and v: self.links.append(v)

def _internal_targets(page, site):
    "The files inside the site that `page`'s links and sources point to, as (link, path) pairs."
    p = _Links(); p.feed(page.read_text(errors='replace'))
    for link in p.links:
        u = urllib.parse.urlparse(link)
        if u.scheme or u.netloc or link.startswith(('#', 'data:', 'mailto:', 'javascript:')): continue
        path = urllib.parse.unquote(u.path)
        target = ((site/path.lstrip('/')) if path.startswith('/') else (page.parent/path)).resolve() if path else page  # ('/…': from the site's root, as a server serves 404.html)
        if target.is_dir(): target = target/'index.html'
        yield link, target

def test_every_page_is_built_and_no_link_inside_the_site_is_broken(site):
    chapters = sorted(p.stem for p in (ROOT/'nbs').glob('*.ipynb'))
    for c in chapters: assert (site/'chapters'/f'{c}.html').exists(), f'no page for chapter {c}'
    assert 'TrainLearner' in (site/'api'/'learner.html').read_text()  # the API pages come from the docstrings
    # chapters wrap long code lines (no sideways scrolling) and show no empty prompts, by the site's style sheet
    assert 'assets/mtlearn.css' in (site/'chapters'/'20_aggregators.html').read_text()
    css = (site/'assets'/'mtlearn.css').read_text()
    assert 'white-space: pre-wrap' in css and '.jp-InputPrompt' in css
    root = site.resolve()
    broken = [(str(page.relative_to(site)), link) for page in site.rglob('*.html') for link, t in _internal_targets(page, site)
              if not (t.exists() and root in t.parents)]
    assert not broken, f'{len(broken)} broken links, such as {broken[:5]}'

def _dom(browser, url, tmp_path):
    "The page's DOM after a headless browser loaded it and ran its scripts."
    r = subprocess.run([browser, '--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', f'--user-data-dir={tmp_path}',
                        '--virtual-time-budget=5000', '--dump-dom', url], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout

@pytest.mark.skipif(BROWSER is None, reason='no headless browser installed (apt-get install chromium)')
def test_a_browser_shows_the_home_page_and_a_chapter_with_its_plots(site, tmp_path):
    home = _dom(BROWSER, (site/'index.html').as_uri(), tmp_path/'home')
    assert 'mtlearn' in home and 'Quick start' in home
    assert 'chapters/21_multitask.html' in home  # the navigation reaches the chapters
    page = _dom(BROWSER, (site/'chapters'/'10_activations.html').as_uri(), tmp_path/'ch')
    assert 'ActivationStats' in page
    plots = re.findall(r'<img[^>]+src="data:image/png;base64,', page)
    assert len(plots) >= 3, f'{len(plots)} plots on the activations chapter'

def test_the_api_pages_show_signatures_and_patched_methods_under_their_class(site):
    page = (site/'api'/'learner.html').read_text()
    assert 'id="mtlearn.learner.Learner.fit_one_cycle"' in page and 'id="mtlearn.learner.Learner.save"' in page
    assert 'id="mtlearn.learner.save"' not in page and 'id="mtlearn.learner.fit_one_cycle"' not in page
    sig = re.search(r'id="mtlearn.learner.Learner".*?</h2>(.*?)</code>', page, re.S)  # the class's own signature
    assert sig and 'loss_func' in re.sub(r'<[^>]+>', '', sig.group(1)), 'no constructor signature under Learner'

@pytest.mark.skipif(BROWSER is None, reason='no headless browser installed (apt-get install chromium)')
def test_a_browser_searches_the_site_opened_from_disk(site, tmp_path):
    "The search box works from file:// (no server): `?q=` fills it, and the results link to the pages that match."
    dom = _dom(BROWSER, (site/'index.html').as_uri() + '?q=GuardCB%20undo', tmp_path/'q')
    box = re.search(r'<div id="mt-search">(.*?)</div>', dom, re.S)
    assert box, 'no search box on the home page'
    links = re.findall(r'<a href="([^"]+)"', box.group(1))
    assert any('api/learner.html' in l for l in links), links[:10]
    assert all(l.startswith('file://') for l in links)  # resolved against the site's folder
