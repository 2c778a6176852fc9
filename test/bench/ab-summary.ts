// ab-summary.ts — the ratios of an ab.sh run: for each placement, metric and
// contender, B's p50 over A's p50 in each round, and their range over the rounds.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

interface Row {
  contender: string;
  metric: string;
  p50: number;
  p99: number;
}

const dir = process.argv[2];
const runs = new Map<string, Row[]>(); // "<placement>-<side>-<round>" -> rows
for (const f of readdirSync(dir).filter((n) => n.endsWith('.json'))) {
  runs.set(f.replace(/\.json$/, ''), (JSON.parse(readFileSync(join(dir, f), 'utf8')) as { results: Row[] }).results);
}
const keys = [...runs.keys()];
const placements = [...new Set(keys.map((k) => k.split('-').slice(0, -2).join('-')))];
const rounds = [...new Set(keys.map((k) => k.split('-').pop()!))].sort();

console.log('| placement | contender | metric | A p50 (range) | B p50 (range) | B/A p50, per round |');
console.log('|---|---|---|---|---|---|');
for (const placement of placements) {
  const first = runs.get(`${placement}-A-${rounds[0]}`) ?? [];
  for (const { contender, metric } of first) {
    const pick = (side: string) =>
      rounds.map((r) => runs.get(`${placement}-${side}-${r}`)?.find((x) => x.contender === contender && x.metric === metric)?.p50);
    const a = pick('A');
    const b = pick('B');
    const range = (v: (number | undefined)[]) => {
      const ok = v.filter((x): x is number => x !== undefined);
      return ok.length ? `${Math.min(...ok).toFixed(2)}–${Math.max(...ok).toFixed(2)}` : 'n/a';
    };
    const ratios = a.map((x, i) => (x !== undefined && b[i] !== undefined ? (b[i]! / x).toFixed(2) : 'n/a'));
    const med = (v: (number | undefined)[]) => {
      const ok = v.filter((x): x is number => x !== undefined).sort((p, q) => p - q);
      return ok.length ? ok[Math.floor(ok.length / 2)].toFixed(2) : 'n/a';
    };
    console.log(`| ${placement} | ${contender} | ${metric} | ${med(a)} (${range(a)}) | ${med(b)} (${range(b)}) | ${ratios.join(', ')} |`);
  }
}
