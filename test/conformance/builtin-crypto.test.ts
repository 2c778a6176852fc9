// builtin-crypto.test.ts — the built-in `crypto` module (createHmac): RFC 4231 vectors for
// HMAC-SHA-256/384/512, encodings, byte sources, chaining and reset semantics, imports from
// modules and handlers, and the errors around it, on every tier.
import { createHmac as nodeHmac } from 'node:crypto';
import { afterAll, afterEach, beforeAll, expect, it } from 'vitest';
import type { LoadedJSSandbox } from '../../src/index.js';
import { describeEachBackend } from './backends.js';

const repeat = (byte: number, n: number) => Buffer.alloc(n, byte).toString('hex');

// RFC 4231 §4: key and data as hex (or text), expected MACs in hex. Case 5 (truncated
// output) is left out: digest() always returns the whole MAC.
const RFC4231: { name: string; key: string; data: string; text?: boolean; sha256: string; sha384: string; sha512: string }[] = [
  {
    name: 'case 1',
    key: repeat(0x0b, 20),
    data: Buffer.from('Hi There').toString('hex'),
    sha256: 'b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7',
    sha384: 'afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59cfaea9ea9076ede7f4af152e8b2fa9cb6',
    sha512:
      '87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cdedaa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854',
  },
  {
    name: 'case 2 (text key and data)',
    key: 'Jefe',
    data: 'what do ya want for nothing?',
    text: true,
    sha256: '5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843',
    sha384: 'af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e8e2240ca5e69e2c78b3239ecfab21649',
    sha512:
      '164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737',
  },
  {
    name: 'case 3',
    key: repeat(0xaa, 20),
    data: repeat(0xdd, 50),
    sha256: '773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe',
    sha384: '88062608d3e6ad8a0aa2ace014c8a86f0aa635d947ac9febe83ef4e55966144b2a5ab39dc13814b94e3ab6e101a34f27',
    sha512:
      'fa73b0089d56a284efb0f0756c890be9b1b5dbdd8ee81a3655f83e33b2279d39bf3e848279a722c806b485a47e67c807b946a337bee8942674278859e13292fb',
  },
  {
    name: 'case 4',
    key: '0102030405060708090a0b0c0d0e0f10111213141516171819',
    data: repeat(0xcd, 50),
    sha256: '82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b',
    sha384: '3e8a69b7783c25851933ab6290af6ca77a9981480850009cc5577c6e1f573b4e6801dd23c4a7d679ccf8a386c674cffb',
    sha512:
      'b0ba465637458c6990e5a8c5f61d4af7e576d97ff94b872de76f8050361ee3dba91ca5c11aa25eb4d679275cc5788063a5f19741120c4f2de2adebeb10a298dd',
  },
  {
    name: 'case 6 (key longer than a block)',
    key: repeat(0xaa, 131),
    data: Buffer.from('Test Using Larger Than Block-Size Key - Hash Key First').toString('hex'),
    sha256: '60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54',
    sha384: '4ece084485813e9088d2c63a041bc5b44f9ef1012a2b588f3cd11f05033ac4c60c2ef6ab4030fe8296248df163f44952',
    sha512:
      '80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f3526b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598',
  },
  {
    name: 'case 7 (key and data longer than a block)',
    key: repeat(0xaa, 131),
    data: Buffer.from(
      'This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm.',
    ).toString('hex'),
    sha256: '9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2',
    sha384: '6617178e941f020d351e2f254e8fd32c602420feb0b8fb9adccebb82461e99c5a678cc31e799176d3860e6110c46523e',
    sha512:
      'e37b6a775dc87dbaa4dfa9f96e5e3ffddebd71f8867289865df5a32d20cdc944b6022cac3c4982b10d5eeb55c3e4de15134676fb6de0446065c97440fa8c6a58',
  },
];

// Shared by the guest handlers: hex text to a Uint8Array.
const FROM_HEX = `function fromHex(h) {
  const b = new Uint8Array(h.length / 2);
  for (let i = 0; i < b.length; i++) b[i] = parseInt(h.substr(2 * i, 2), 16);
  return b;
}`;

// Runs fn in the guest and returns its result, or the name and message of what it threw.
const CATCHING = `function catching(fn) {
  try { return { value: fn() }; } catch (e) { return { name: e.name, isTypeError: e instanceof TypeError, message: e.message }; }
}`;

describeEachBackend('built-in crypto module', (h) => {
  let loaded: LoadedJSSandbox;
  beforeAll(async () => {
    loaded = await h.load(
      {
        // Event: { alg, key, data, text?, format? }; binary key/data come as hex.
        mac: `import { createHmac } from 'crypto';
${FROM_HEX}
function handler(e) {
  const key = e.text ? e.key : fromHex(e.key);
  const data = e.text ? e.data : fromHex(e.data);
  return createHmac(e.alg, key).update(data).digest(e.format ?? 'hex');
}`,
        // The same bytes through every accepted source type.
        sources: `import { createHmac } from 'crypto';
${FROM_HEX}
function handler(e) {
  const key = fromHex(e.key), data = fromHex(e.data);
  const mac = (k, d) => createHmac('sha256', k).update(d).digest('hex');
  const padded = new Uint8Array(data.length + 7);
  padded.set(data, 3);
  const keyCopy = key.slice().buffer;
  return {
    uint8: mac(key, data),
    arrayBuffer: mac(keyCopy, data.slice().buffer),
    dataView: mac(new DataView(keyCopy), new DataView(padded.buffer, 3, data.length)),
    subarray: mac(key, padded.subarray(3, 3 + data.length)),
    int32: mac(key, new Int32Array(padded.buffer.slice(3, 3 + data.length - (data.length % 4)))),
    empty: mac(new Uint8Array(0), new ArrayBuffer(0)),
  };
}`,
        strings: `import { createHmac } from 'crypto';
function handler(e) { return createHmac('sha256', e.key).update(e.data).digest('hex'); }`,
        chained: `import { createHmac } from 'crypto';
function handler(e) {
  const one = createHmac(e.alg, 'k');
  let chained = createHmac(e.alg, 'k');
  const sameObject = chained.update(e.parts[0]) === chained;
  for (const p of e.parts.slice(1)) chained = chained.update(p);
  return { sameObject, whole: one.update(e.parts.join('')).digest('hex'), chained: chained.digest('hex') };
}`,
        reset: `import { createHmac } from 'crypto';
function handler() {
  const m = createHmac('sha384', 'key').update('first');
  const first = m.digest('hex');
  const again = m.digest('hex');
  const second = m.update('second').digest('hex');
  const finalized = m.update('third').finalize();
  return {
    first, again, second,
    freshFirst: createHmac('sha384', 'key').update('first').digest('hex'),
    freshSecond: createHmac('sha384', 'key').update('second').digest('hex'),
    finalizeReturnsObject: finalized === m,
    third: m.digest('base64url'),
    freshThird: createHmac('sha384', 'key').update('third').digest('base64url'),
    emptyMessage: createHmac('sha256', 'key').digest('hex'),
    tag: Object.prototype.toString.call(m),
  };
}`,
        errors: `import { createHmac } from 'crypto';
${CATCHING}
function handler() {
  return {
    badAlg: catching(() => createHmac('md5', 'k')),
    noAlg: catching(() => createHmac(undefined, 'k')),
    objectAlg: catching(() => createHmac({ toString() { return 'sha256'; } }, 'k')),
    upperAlg: catching(() => createHmac('SHA256', 'k').update('x').digest('HEX')),
    badFormat: catching(() => createHmac('sha256', 'k').update('x').digest('latin1')),
    noFormat: catching(() => createHmac('sha256', 'k').digest()),
    badKey: catching(() => createHmac('sha256', 42)),
    noKey: catching(() => createHmac('sha256')),
    badData: catching(() => createHmac('sha256', 'k').update({ length: 3 })),
    wrongThis: catching(() => createHmac('sha256', 'k').update.call({}, 'x')),
  };
}`,
        // Every message length across the block and padding boundaries, in one piece and
        // split in three (partial-block buffering).
        lengths: `import { createHmac } from 'crypto';
function handler(e) {
  const out = [];
  for (let n = 0; n <= e.max; n++) {
    const data = new Uint8Array(n).map((_, i) => (i * 7 + n) & 255);
    const a = Math.floor(n / 3), b = Math.floor((2 * n) / 3);
    const whole = createHmac(e.alg, 'key').update(data).digest('hex');
    const split = createHmac(e.alg, 'key').update(data.subarray(0, a)).update(data.subarray(a, b)).update(data.subarray(b)).digest('hex');
    out.push(whole === split ? whole : 'split differs: ' + split);
  }
  return out;
}`,
        viaModule: "import { sign } from 'user:signer'; function handler(e) { return sign(e.key, e.msg); }",
        namespace: `import * as crypto from 'crypto';
function handler(e) { return [Object.keys(crypto), crypto.createHmac('sha512', e.key).update(e.msg).digest('base64')]; }`,
      },
      {
        modules: [
          ['signer', "import { createHmac } from 'crypto';\nexport const sign = (key, msg) => createHmac('sha512', key).update(msg).digest('base64');"],
        ],
      },
    );
  });
  afterAll(() => loaded?.dispose());

  const open: { dispose(): Promise<void> }[] = [];
  afterEach(async () => {
    await Promise.all(open.splice(0).map((s) => s.dispose()));
  });

  it.each(RFC4231)('matches RFC 4231 $name for SHA-256, SHA-384 and SHA-512', async (c) => {
    for (const alg of ['sha256', 'sha384', 'sha512'] as const) {
      const got = await loaded.callHandler('mac', { alg, key: c.key, data: c.data, text: c.text });
      expect(got, alg).toBe(c[alg]);
    }
  });

  it('matches Node for every message length from 0 to 260 bytes, whole or in pieces', async () => {
    for (const alg of ['sha256', 'sha384', 'sha512']) {
      const expected = Array.from({ length: 261 }, (_, n) =>
        nodeHmac(alg, 'key').update(Uint8Array.from({ length: n }, (_, i) => (i * 7 + n) & 255)).digest('hex'),
      );
      expect(await loaded.callHandler('lengths', { alg, max: 260 })).toEqual(expected);
    }
  });

  it('encodes as base64 (padded) and base64url (unpadded), as Node does', async () => {
    const key = Buffer.from(repeat(0x0b, 20), 'hex');
    const seen = { plus: false, slash: false, padded: false };
    // Several messages, so the digests exercise '+', '/' and every padding length.
    for (let i = 0; i < 8; i++) {
      const data = `message ${i}`;
      for (const alg of ['sha256', 'sha384', 'sha512'] as const) {
        const event = { alg, key: key.toString('hex'), data: Buffer.from(data).toString('hex') };
        const b64 = await loaded.callHandler('mac', { ...event, format: 'base64' });
        const b64url = await loaded.callHandler('mac', { ...event, format: 'base64url' });
        expect(b64).toBe(nodeHmac(alg, key).update(data).digest('base64'));
        expect(b64url).toBe(nodeHmac(alg, key).update(data).digest('base64url'));
        seen.plus ||= b64.includes('+');
        seen.slash ||= b64.includes('/');
        seen.padded ||= b64.endsWith('=');
      }
    }
    expect(seen).toEqual({ plus: true, slash: true, padded: true });
  });

  it('takes keys and data as Uint8Array, ArrayBuffer, DataView and other typed-array views', async () => {
    const key = Buffer.from(Array.from({ length: 40 }, (_, i) => (i * 37) & 255));
    const data = Buffer.from(Array.from({ length: 301 }, (_, i) => (i * 11 + 5) & 255));
    const expected = nodeHmac('sha256', key).update(data).digest('hex');
    const got = await loaded.callHandler('sources', { key: key.toString('hex'), data: data.toString('hex') });
    expect(got).toEqual({
      uint8: expected,
      arrayBuffer: expected,
      dataView: expected,
      subarray: expected,
      int32: nodeHmac('sha256', key).update(data.subarray(0, 300)).digest('hex'),
      empty: nodeHmac('sha256', Buffer.alloc(0)).update(Buffer.alloc(0)).digest('hex'),
    });
  });

  it('hashes strings as UTF-8, unpaired surrogates as U+FFFD like Node', async () => {
    for (const [key, data] of [
      ['clé', 'naïve café — ✓ 𝄞'],
      ['k\ud800', 'lone \udc00 and \ud83d at the end \ud83d'],
    ]) {
      expect(await loaded.callHandler('strings', { key, data })).toBe(nodeHmac('sha256', key).update(data).digest('hex'));
    }
  });

  it('chains update() calls to the same result as one update of the concatenation', async () => {
    const parts = ['The quick ', 'brown fox ', '', 'x'.repeat(200), ' jumps over the lazy dog', 'é'.repeat(70)];
    for (const alg of ['sha256', 'sha384', 'sha512']) {
      const got = await loaded.callHandler('chained', { alg, parts });
      expect(got.sameObject).toBe(true);
      expect(got.chained).toBe(got.whole);
      expect(got.whole).toBe(nodeHmac(alg, 'k').update(parts.join('')).digest('hex'));
    }
  });

  it('repeats the digest until the next update(), which starts a new MAC with the same key', async () => {
    const got = await loaded.callHandler('reset', {});
    expect(got.again).toBe(got.first);
    expect(got.first).toBe(got.freshFirst);
    expect(got.second).toBe(got.freshSecond);
    expect(got.finalizeReturnsObject).toBe(true);
    expect(got.third).toBe(got.freshThird);
    expect(got.emptyMessage).toBe(nodeHmac('sha256', 'key').digest('hex'));
    expect(got.tag).toBe('[object Hmac]');
  });

  it('is importable from a user module as well as from a handler', async () => {
    const event = { key: 'Jefe', msg: 'what do ya want for nothing?' };
    const expected = nodeHmac('sha512', event.key).update(event.msg).digest('base64');
    expect(await loaded.callHandler('mac', { alg: 'sha512', key: event.key, data: event.msg, text: true, format: 'base64' })).toBe(expected);
    expect(await loaded.callHandler('viaModule', event)).toBe(expected);
    expect(await loaded.callHandler('namespace', event)).toEqual([['createHmac'], expected]);
  });

  it('throws TypeErrors the guest can catch for bad algorithms, formats, keys and data', async () => {
    const got = await loaded.callHandler('errors', {});
    const typeError = (message: string | RegExp) => ({ name: 'TypeError', isTypeError: true, message: typeof message === 'string' ? message : expect.stringMatching(message) });
    expect(got).toEqual({
      badAlg: typeError('Invalid algorithm: "md5"'),
      noAlg: typeError('Invalid algorithm: "undefined"'),
      objectAlg: typeError(/^Invalid algorithm/),
      upperAlg: { value: nodeHmac('sha256', 'k').update('x').digest('hex') },
      badFormat: typeError('Unsupported format: "latin1"'),
      noFormat: typeError('Unsupported format: "undefined"'),
      badKey: typeError(/"key" argument must be/),
      noKey: typeError(/"key" argument must be/),
      badData: typeError(/"data" argument must be/),
      wrongThis: typeError(/Hmac/),
    });
    expect(loaded.poisoned).toBe(false);
  });

  it('frees Hmac objects with the garbage collector and works again after unload()', async () => {
    const proto = await h.builder().build();
    open.push(proto);
    const sandbox = await proto.loadRuntime();
    const churn = `import { createHmac } from 'crypto';
function handler(e) { let last; for (let i = 0; i < e.n; i++) last = createHmac('sha512', 'k' + i).update('x').digest('hex'); return last; }`;
    sandbox.addHandler('churn', churn);
    const first = await sandbox.getLoadedSandbox();
    const expected = nodeHmac('sha512', 'k19999').update('x').digest('hex');
    expect(await first.callHandler('churn', { n: 20000 }, { gc: true })).toBe(expected);
    const fresh = await first.unload();
    fresh.addHandler('churn', churn);
    const second = await fresh.getLoadedSandbox();
    expect(await second.callHandler('churn', { n: 20000 }, { gc: true })).toBe(expected);
  });

  it('still fails getLoadedSandbox() naming an unknown bare module', async () => {
    const proto = await h.builder().build();
    open.push(proto);
    const sandbox = await proto.loadRuntime();
    sandbox.addHandler('h', "import { readFileSync } from 'fs'; function handler() { return readFileSync; }");
    await expect(sandbox.getLoadedSandbox()).rejects.toMatchObject({ code: 'ERR_COMPILE', message: expect.stringContaining("'fs'") });
  });
});
