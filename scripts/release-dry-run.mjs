// `npm run release:dry-run`: what a release would publish, without publishing
// anything. It runs the release's own steps (`napi artifacts`, then
// `napi prepublish -t npm`, as .github/workflows/CI.yml's publish job does) on
// a copy of the package in a temp directory, with every platform package's
// publish skipped, then prints the main package.json as it would be published
// (with the optionalDependencies that prepublish adds) and `npm pack --dry-run`
// of the main package and of each platform package. The work tree is not
// touched. The staging itself is support/release.mjs.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, relative } from 'node:path'
import { pathToFileURL } from 'node:url'
import { localReleaseBinaries, packList, PACKAGE_NAME, root, rootPackage, stageRelease, TARGETS } from '../support/release.mjs'

function formatSize(bytes) {
  if (bytes < 1024) return `${bytes} B`
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} kB`
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`
}

function printPack(packageDir, placeholder) {
  const packed = packList(packageDir)
  console.log(`\n## npm pack --dry-run: ${packed.name}@${packed.version}${placeholder ? '   (binary: PLACEHOLDER, built by CI only)' : ''}`)
  for (const file of packed.files) console.log(`  ${formatSize(file.size).padStart(9)}  ${file.path}`)
  console.log(`  ${packed.filename}: ${formatSize(packed.size)} packed, ${packed.files.length} files`)
}

function main() {
  const keep = process.argv.includes('--keep')
  const binaries = localReleaseBinaries()
  const dir = mkdtempSync(join(tmpdir(), 'cmux-preview-proxy-release-'))
  try {
    console.log(`# Release dry run of ${PACKAGE_NAME}@${rootPackage.version} (nothing is published)`)
    console.log(`\nStaged in ${dir}: napi artifacts, then napi prepublish -t npm --skip-optional-publish --no-gh-release.`)
    for (const target of TARGETS) {
      const binary = binaries[target.platformArchABI]
      console.log(`  ${target.triple.padEnd(28)} ${binary ? `release build ${relative(root, binary)}` : 'placeholder (built by CI only)'}`)
    }
    const { packageJson, platformPackages } = stageRelease(dir, binaries)
    console.log('\n## package.json of the main package, as published')
    console.log(JSON.stringify(packageJson, null, 2))
    printPack(dir, false)
    for (const target of TARGETS) printPack(platformPackages[target.platformArchABI], !binaries[target.platformArchABI])
    console.log(`
## What the publish job (.github/workflows/CI.yml, on a tag v${rootPackage.version}) runs
  npm run artifacts          # napi artifacts: the six bindings-<target> artifacts into npm/<platform>/
  npx napi prepublish -t npm # npm publish of each platform package, the GitHub release, optionalDependencies
  npm publish                # the main package, as above (provenance from NPM_CONFIG_PROVENANCE)`)
  } finally {
    if (keep) console.log(`\n(kept ${dir})`)
    else rmSync(dir, { recursive: true, force: true })
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) main()
