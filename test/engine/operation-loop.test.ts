// operation-loop.test.ts — the host half of the guest event loop (src/hostcalls/event-loop.ts)
// with binary data: completions handed over in one wait answer carry their bytes as fields
// after the JSON, each completion's placeholders renumbered past the fields before it, and
// a completion whose bytes do not fit the input buffer becomes an error.
import { describe, expect, it } from 'vitest';
import { decodeBinary, encodeBinary } from '../../src/binary.js';
import { decodeMessageAt } from '../../src/engine/protocol.js';
import { CompletionKind, OperationLoop } from '../../src/hostcalls/event-loop.js';

function binaryOutcome(value: unknown) {
  const { json, buffers } = encodeBinary(value);
  return { kind: CompletionKind.Value as const, json, buffers };
}

async function settled(): Promise<void> {
  await new Promise((r) => setImmediate(r));
}

describe('OperationLoop with binary results', () => {
  it('numbers the fields of several completions in one answer in order', async () => {
    const loop = new OperationLoop(4, 4096);
    loop.start(async () => binaryOutcome({ a: new Uint8Array([1, 2]), b: new Uint8Array([3]).buffer }));
    loop.start(async () => binaryOutcome('text only'));
    loop.start(async () => binaryOutcome([Buffer.from([9, 8, 7])]));
    await settled();
    const { message } = decodeMessageAt(await loop.wait(0), 0);
    expect(message.fields).toHaveLength(4);
    const answer = decodeBinary(message.fields[0].toString('utf8'), message.fields.slice(1)) as [number, number, unknown][];
    expect(answer.map(([id]) => id)).toEqual([1, 2, 3]);
    const first = answer[0][2] as { a: Uint8Array; b: ArrayBuffer };
    expect(Array.from(first.a)).toEqual([1, 2]);
    expect(Array.from(new Uint8Array(first.b))).toEqual([3]);
    expect(answer[1][2]).toBe('text only');
    expect(Array.from((answer[2][2] as Uint8Array[])[0])).toEqual([9, 8, 7]);
    loop.close();
  });

  it('leaves a completion whose bytes do not fit for a later answer, and refuses one that never fits', async () => {
    const loop = new OperationLoop(4, 200);
    loop.start(async () => binaryOutcome(new Uint8Array(120)));
    loop.start(async () => binaryOutcome(new Uint8Array(120)));
    loop.start(async () => binaryOutcome(new Uint8Array(500)));
    await settled();
    const answers: [number, number, unknown][][] = [];
    for (let i = 0; i < 3; i++) {
      const { message } = decodeMessageAt(await loop.wait(0), 0);
      answers.push(decodeBinary(message.fields[0].toString('utf8'), message.fields.slice(1)) as [number, number, unknown][]);
    }
    expect(answers.map((a) => a.map(([id, kind]) => [id, kind]))).toEqual([[[1, 0]], [[2, 0]], [[3, CompletionKind.HostError]]]);
    expect((answers[1][0][2] as Uint8Array).byteLength).toBe(120);
    expect(answers[2][0][2]).toMatch(/does not fit/);
    loop.close();
  });
});
