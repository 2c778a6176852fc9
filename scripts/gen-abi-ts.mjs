// gen-abi-ts.mjs — writes src/engine/abi.generated.ts from guest/include/abi.h so the
// TypeScript side never hand-copies an ABI constant. Run by setup; idempotent.
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const header = join(root, 'guest/include/abi.h');
const target = join(root, 'src/engine/abi.generated.ts');

const lines = [
  '// abi.generated.ts — GENERATED from guest/include/abi.h by scripts/gen-abi-ts.mjs.',
  '// Do not edit: change abi.h and run setup again.',
  '',
];
const define = /^#define\s+(AIRLOCK_[A-Z0-9_]+)\s+(0x[0-9A-Fa-f]+|\d+)\b/;
let count = 0;
for (const line of readFileSync(header, 'utf8').split('\n')) {
  const m = define.exec(line);
  if (m) {
    lines.push(`export const ${m[1]} = ${m[2]};`);
    count++;
  }
}
if (count === 0) throw new Error(`no AIRLOCK_* constants found in ${header}`);
const text = lines.join('\n') + '\n';
if (!existsSync(target) || readFileSync(target, 'utf8') !== text) writeFileSync(target, text);
