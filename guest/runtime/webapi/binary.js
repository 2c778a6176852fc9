// binary.js — the guest half of binary data across the boundary (setBinaryData): a value's
// Uint8Arrays and ArrayBuffers travel as message fields beside its JSON text, each replaced in
// the text by a placeholder { "$airlock.binary": <index>, "type": "Uint8Array" | "ArrayBuffer" }.
// The host half is src/binary.ts; docs/PROTOCOL.md defines the encoding.
const KEY = '$airlock.binary';
const hasOwn = (o, k) => Object.prototype.hasOwnProperty.call(o, k);

// [json text or undefined, [ArrayBuffer, ...]]; the buffers are copies, so later writes by
// the handler cannot change what the host reads.
export function encode(value) {
  const buffers = [];
  const json = JSON.stringify(value, function (key, v) {
    const original = this[key];
    if (original instanceof Uint8Array || original instanceof ArrayBuffer) {
      const type = original instanceof ArrayBuffer ? 'ArrayBuffer' : 'Uint8Array';
      buffers.push(type === 'ArrayBuffer' ? original.slice(0) : original.buffer.slice(original.byteOffset, original.byteOffset + original.byteLength));
      return { [KEY]: buffers.length - 1, type };
    }
    if (v !== null && typeof v === 'object' && hasOwn(v, KEY)) throw new TypeError(`an object with the key '${KEY}' cannot cross the boundary when binary data is on`);
    return v;
  });
  return [json, buffers];
}

// The value of `json` with each placeholder replaced by a fresh copy of its buffer. The host is
// trusted, but a malformed placeholder is still refused rather than guessed at.
export function decode(json, buffers) {
  return JSON.parse(json, function (key, v) {
    if (v === null || typeof v !== 'object' || !hasOwn(v, KEY)) return v;
    const index = v[KEY];
    const keys = Object.keys(v);
    if (keys.length !== 2 || !Number.isInteger(index) || index < 0 || index >= buffers.length || (v.type !== 'Uint8Array' && v.type !== 'ArrayBuffer')) {
      throw new TypeError('malformed binary placeholder');
    }
    const copy = buffers[index].slice(0);
    return v.type === 'ArrayBuffer' ? copy : new Uint8Array(copy);
  });
}
