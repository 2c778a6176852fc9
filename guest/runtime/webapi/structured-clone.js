// structured-clone.js — structuredClone over @ungap/structured-clone, with the standard's
// DataCloneError for what cannot be cloned (functions, symbols).
import { serialize, deserialize } from '@ungap/structured-clone';

export function structuredClone(value, options) {
  if (arguments.length === 0) throw new TypeError('The "value" argument must be specified');
  void options; // a single-realm guest has nothing to transfer
  let records;
  try {
    records = serialize(value, { lossy: false });
  } catch (e) {
    if (e instanceof TypeError) throw new globalThis.DOMException(`${e.message.replace(/^unable to serialize /, '')} could not be cloned.`, 'DataCloneError');
    throw e;
  }
  return deserialize(records);
}
