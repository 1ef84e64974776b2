// The site's search box. MkDocs Material's own search fetches its index, which a browser refuses for pages opened
// from disk (file://); here the index is a script (search_index.js, written by docs/build.py), so the search works
// from disk and from a server alike. `?q=words` in a page's address fills the box and searches (the tests use it).
(function () {
  const root = document.currentScript.src.replace(/assets\/mtsearch\.js.*$/, '');
  function find(q) {
    const words = q.toLowerCase().split(/\s+/).filter(Boolean);
    if (!words.length) return [];
    const hits = [];
    for (const d of (window.MTLEARN_SEARCH || [])) {
      const title = d.title.toLowerCase(), text = title + ' ' + d.text.toLowerCase();
      if (words.every(w => text.includes(w))) hits.push({d, rank: words.every(w => title.includes(w)) ? 0 : 1});
    }
    hits.sort((a, b) => a.rank - b.rank);  // (stable: the site's order within a rank)
    return hits.slice(0, 40).map(h => h.d);
  }
  function excerpt(d, q) {
    const w = q.toLowerCase().split(/\s+/).filter(Boolean)[0] || '';
    const i = Math.max(0, d.text.toLowerCase().indexOf(w) - 60);
    return (i > 0 ? '…' : '') + d.text.slice(i, i + 160) + '…';
  }
  function setup() {
    const box = document.createElement('div');
    box.id = 'mt-search';
    box.innerHTML = '<input type="search" placeholder="Search" aria-label="Search the documentation"><ol></ol>';
    (document.querySelector('.md-header__inner') || document.body).appendChild(box);
    const input = box.querySelector('input'), list = box.querySelector('ol');
    function show() {
      list.innerHTML = '';
      for (const d of find(input.value)) {
        const li = document.createElement('li'), a = document.createElement('a'), p = document.createElement('span');
        a.href = root + d.location;
        a.textContent = d.title;
        p.textContent = excerpt(d, input.value);
        li.append(a, p);
        list.appendChild(li);
      }
    }
    input.addEventListener('input', show);
    input.addEventListener('keydown', e => { if (e.key === 'Escape') { input.value = ''; show(); } });
    const q = new URLSearchParams(location.search).get('q');
    if (q) { input.value = q; show(); }
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', setup); else setup();
})();
