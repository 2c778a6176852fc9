// seal-dts.mjs — runs after `tsc -p tsconfig.build.json` (stripInternal): gives every class
// whose constructor is `@internal` a `protected constructor();` in its dist/*.d.ts. The
// strip alone would leave such a class with an implicit public no-argument constructor, so
// users could write `new Snapshot()` and fail only at run time; sealed, tsc refuses it.
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const src = join(root, 'src');
const dist = join(root, 'dist');

function* sources(dir) {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) yield* sources(path);
    else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts')) yield path;
  }
}

let sealed = 0;
for (const file of sources(src)) {
  const text = readFileSync(file, 'utf8');
  // A class's name is the nearest `class X` above its `/** @internal */` constructor.
  const names = [];
  const internalCtor = /\/\*\* @internal \*\/\s*(?:(?:public|protected|private)\s+)?constructor\s*\(/g;
  for (const match of text.matchAll(internalCtor)) {
    const before = text.slice(0, match.index);
    const classes = [...before.matchAll(/\bclass\s+(\w+)/g)];
    if (classes.length) names.push(classes[classes.length - 1][1]);
  }
  if (!names.length) continue;
  const dts = join(dist, relative(src, file)).replace(/\.ts$/, '.d.ts');
  let out = readFileSync(dts, 'utf8');
  for (const name of names) {
    const opening = new RegExp(`^((?:export )?declare (?:abstract )?class ${name}\\b[^\\n]*\\{\\n)`, 'm');
    if (!opening.test(out)) throw new Error(`seal-dts: class ${name} not found in ${dts}`);
    out = out.replace(opening, `$1    protected constructor();\n`);
    sealed++;
  }
  writeFileSync(dts, out);
}
console.log(`seal-dts: ${sealed} internal constructors sealed`);
