// compile.test.ts — the guest runtime's COMPILE request and LOAD's bytecode field, driven
// through the native target: bytecode is read only under LOAD_FLAG_BYTECODE, and what it
// loads behaves as the compiled source does (stack locations included).
import { afterAll, describe, expect, it } from 'vitest';
import {
  AIRLOCK_LOAD_FLAG_BYTECODE,
  AIRLOCK_MSG_COMPILE,
  AIRLOCK_MSG_LOAD,
  AIRLOCK_MSG_READY,
  AIRLOCK_MSG_RESULT,
  AIRLOCK_STATUS_BAD_REQUEST,
  AIRLOCK_STATUS_COMPILE_ERROR,
  AIRLOCK_STATUS_OK,
} from '../../src/engine/abi.generated';
import { NativeGuest, texts, type Exchange } from './driver';

const guests: NativeGuest[] = [];

async function start(): Promise<NativeGuest> {
  const g = new NativeGuest();
  guests.push(g);
  expect((await g.boot()).final.kind).toBe(AIRLOCK_MSG_READY);
  expect((await g.loadRuntime()).final.status).toBe(AIRLOCK_STATUS_OK);
  return g;
}

afterAll(async () => {
  await Promise.all(guests.map((g) => g.close()));
});

function ok(x: Exchange): Exchange {
  expect(x.final.kind).toBe(AIRLOCK_MSG_RESULT);
  expect({ status: x.final.status, fields: texts(x) }).toMatchObject({ status: AIRLOCK_STATUS_OK });
  return x;
}

const handler = `import { twice } from 'lib:math';
function handler(event) {
  if (event.fail) throw new RangeError('bad ' + twice(event.n));
  return { n: twice(event.n), src: handler.toString().length };
}`;
const module = `export function twice(n) {\n  return n * 2;\n}`;

describe('COMPILE', () => {
  it('answers one bytecode field per group and an empty one for a group that does not compile', async () => {
    const g = await start();
    const x = ok(await g.send(AIRLOCK_MSG_COMPILE, 0, ['handler', '', 'h', handler, 'module', 'lib', 'math', module, 'handler', '', 'broken', 'let let = ;']));
    expect(x.final.fields.map((f) => f.length > 0)).toEqual([true, true, false]);
  });

  it('evaluates nothing: top-level code of a compiled source does not run', async () => {
    const g = await start();
    const x = ok(await g.send(AIRLOCK_MSG_COMPILE, 0, ['handler', '', 'h', 'console.log("ran"); function handler() {}']));
    expect(x.allConsole).toEqual([]);
  });

  it('rejects groups of the wrong shape', async () => {
    const g = await start();
    const x = await g.send(AIRLOCK_MSG_COMPILE, 0, ['handler', '', 'h']);
    expect(x.final.status).toBe(AIRLOCK_STATUS_BAD_REQUEST);
  });
});

describe('LOAD with bytecode', () => {
  async function compiled(): Promise<{ h: Buffer; m: Buffer }> {
    const g = await start();
    const [h, m] = ok(await g.send(AIRLOCK_MSG_COMPILE, 0, ['handler', '', 'h', handler, 'module', 'lib', 'math', module])).final.fields;
    return { h: Buffer.from(h!), m: Buffer.from(m!) };
  }

  it('runs the bytecode exactly as the source: results, exceptions and stack locations', async () => {
    const { h, m } = await compiled();
    const fromSource = await start();
    ok(await fromSource.send(AIRLOCK_MSG_LOAD, 0, ['module', 'lib', 'math', module, 'handler', '', 'h', handler]));
    const fromBytecode = await start();
    ok(await fromBytecode.send(AIRLOCK_MSG_LOAD, AIRLOCK_LOAD_FLAG_BYTECODE, ['module', 'lib', 'math', module, m, 'handler', '', 'h', handler, h]));
    for (const event of [{ n: 3 }, { n: 4, fail: true }]) {
      const a = await fromSource.call('h', event);
      const b = await fromBytecode.call('h', event);
      expect({ status: b.final.status, fields: texts(b) }).toEqual({ status: a.final.status, fields: texts(a) });
    }
    const thrown = texts(await fromBytecode.call('h', { n: 1, fail: true }));
    expect(thrown[2]).toContain('handler:h:3:');
  });

  it('compiles the source of a group whose bytecode field is empty', async () => {
    const { m } = await compiled();
    const g = await start();
    ok(await g.send(AIRLOCK_MSG_LOAD, AIRLOCK_LOAD_FLAG_BYTECODE, ['module', 'lib', 'math', module, m, 'handler', '', 'h', handler, '']));
    expect(JSON.parse(texts(ok(await g.call('h', { n: 5 })))[0]!)).toMatchObject({ n: 10 });
  });

  it('reports a compile error from the source when there is no bytecode, as without a cache', async () => {
    const g = await start();
    const x = await g.send(AIRLOCK_MSG_LOAD, AIRLOCK_LOAD_FLAG_BYTECODE, ['handler', '', 'broken', 'let let = ;', '']);
    expect(x.final.status).toBe(AIRLOCK_STATUS_COMPILE_ERROR);
    expect(texts(x)[0]).toMatch(/^handler 'broken': SyntaxError/);
  });

  it('never reads a bytecode field without the flag: five-field groups are a bad request', async () => {
    const { h } = await compiled();
    const g = await start();
    const x = await g.send(AIRLOCK_MSG_LOAD, 0, ['handler', '', 'h', 'function handler() { return 1 }', h]);
    expect(x.final.status).toBe(AIRLOCK_STATUS_BAD_REQUEST);
    const four = await g.send(AIRLOCK_MSG_LOAD, 0, ['handler', '', 'h', 'function handler() { return 1 }', h, '', 'x', 'y']);
    expect(four.final.status).toBe(AIRLOCK_STATUS_BAD_REQUEST);
  });
});
