// A page of 500 ES modules in a waterfall three imports deep, served by any
// request handler: what Chromium loads in the HTTPS proxy mode tests and in
// bench/h2-resets.mjs.

// The page imports LEVEL1 modules, each of which imports
// its share of LEVEL2, each of those its share of LEVEL3 (every module is
// reached by exactly one import, so the page needs all three round trips).
export const TREE = { level1: 10, level2: 50, level3: 440 }
export const TREE_MODULES = TREE.level1 + TREE.level2 + TREE.level3

function treeModule(level, i) {
  const children = level === 1
    ? Array.from({ length: TREE.level2 }, (_, k) => k).filter((k) => k % TREE.level1 === i)
    : level === 2
      ? Array.from({ length: TREE.level3 }, (_, k) => k).filter((k) => k % TREE.level2 === i)
      : []
  const childLevel = level + 1
  const imports = children.map((k, n) => `import c${n} from '/tree/l${childLevel}/m${k}.js'`).join('\n')
  const sum = children.length ? children.map((_, n) => `c${n}`).join(' + ') : '0'
  // Each module's default export is how many modules its subtree holds (itself included).
  return `${imports}\nexport default 1 + ${sum}\n`
}

function treeHtml() {
  const imports = Array.from({ length: TREE.level1 }, (_, i) => `import m${i} from '/tree/l1/m${i}.js'`).join('\n')
  const sum = Array.from({ length: TREE.level1 }, (_, i) => `m${i}`).join(' + ')
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>module tree</title></head>
<body>
<p id="tree">tree: loading</p>
<script type="module">
${imports}
document.getElementById('tree').textContent = 'tree: ' + (${sum})
</script>
<script>
addEventListener('error', (e) => { document.getElementById('tree').textContent = 'tree: error ' + e.message }, true)
</script>
</body></html>
`
}

/**
 * Serves /tree/index.html and its ${TREE_MODULES} modules (no-store) for any
 * request handler; returns true when it answered.
 */
export function serveTree(req, res, seen) {
  const path = (req.url ?? '').split('?')[0]
  if (path === '/tree/index.html') {
    seen?.push(path)
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' })
    res.end(treeHtml())
    return true
  }
  const m = /^\/tree\/l([123])\/m(\d+)\.js$/.exec(path)
  if (m) {
    const level = Number(m[1])
    const i = Number(m[2])
    const count = [0, TREE.level1, TREE.level2, TREE.level3][level]
    if (i < count) {
      seen?.push(path)
      res.writeHead(200, { 'content-type': 'text/javascript', 'cache-control': 'no-store' })
      res.end(treeModule(level, i))
      return true
    }
  }
  return false
}
