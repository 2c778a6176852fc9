// binary.ts — the host half of binary data across the boundary (SandboxBuilder.setBinaryData):
// Uint8Arrays (Buffers included) and ArrayBuffers in events, results and host-function
// arguments and results travel as message fields after the JSON text, each replaced in the text
// by the placeholder { "$airlock.binary": <index>, "type": "Uint8Array" | "ArrayBuffer" }.
// The guest half is guest/runtime/webapi/binary.js; docs/PROTOCOL.md defines the encoding.

/** The placeholder's reserved key; an object of the user's own with it is refused. */
export const BINARY_KEY = '$airlock.binary';

export interface EncodedValue {
  /** JSON text, or undefined for `undefined`. */
  json: string | undefined;
  /** The binary fields, in placeholder index order. */
  buffers: Uint8Array[];
}

const hasOwn = (o: object, k: string) => Object.prototype.hasOwnProperty.call(o, k);

/** Thrown for a value that cannot be encoded (a reserved key); callers map it to their own error. */
export class BinaryEncodingError extends Error {}

/**
 * JSON text of `value` with its binary parts split off. A Buffer is caught before its toJSON
 * runs (the replacer sees the original through its holder). Throws what JSON.stringify throws,
 * or BinaryEncodingError.
 */
export function encodeBinary(value: unknown): EncodedValue {
  const buffers: Uint8Array[] = [];
  const json = JSON.stringify(value, function (this: Record<string, unknown>, key: string, v: unknown) {
    const original = this[key];
    if (original instanceof Uint8Array || original instanceof ArrayBuffer) {
      const type = original instanceof ArrayBuffer ? 'ArrayBuffer' : 'Uint8Array';
      buffers.push(original instanceof ArrayBuffer ? new Uint8Array(original) : original);
      return { [BINARY_KEY]: buffers.length - 1, type };
    }
    if (v !== null && typeof v === 'object' && hasOwn(v, BINARY_KEY)) {
      throw new BinaryEncodingError(`an object with the key '${BINARY_KEY}' cannot cross the boundary when binary data is on`);
    }
    return v;
  }) as string | undefined;
  return { json, buffers };
}

/**
 * The value of guest-written `json` with each placeholder replaced by a copy of its field
 * (the fields are views into memory the engine reuses). Guest output is hostile: a
 * placeholder with other keys, an index that is not an integer naming one of `buffers`, an
 * index named a second time, or an unknown type throws BinaryEncodingError, as does invalid
 * JSON (SyntaxError).
 */
export function decodeBinary(json: string, buffers: readonly Uint8Array[]): unknown {
  // An encoder names each field once; a repeated index would have the host copy one big
  // field per 40-byte placeholder (gigabytes from one output buffer).
  const used = new Set<number>();
  return JSON.parse(json, (_key, v: unknown) => {
    if (v === null || typeof v !== 'object' || !hasOwn(v, BINARY_KEY)) return v;
    const placeholder = v as Record<string, unknown>;
    const index = placeholder[BINARY_KEY];
    const type = placeholder.type;
    if (Object.keys(placeholder).length !== 2 || typeof index !== 'number' || !Number.isInteger(index) || index < 0 || index >= buffers.length) {
      throw new BinaryEncodingError('malformed binary placeholder');
    }
    if (type !== 'Uint8Array' && type !== 'ArrayBuffer') throw new BinaryEncodingError(`unknown binary placeholder type ${JSON.stringify(type)?.slice(0, 40)}`);
    if (used.has(index)) throw new BinaryEncodingError(`binary field ${index} is named by more than one placeholder`);
    used.add(index);
    const copy = new Uint8Array(buffers[index]);
    return type === 'ArrayBuffer' ? copy.buffer : copy;
  });
}
