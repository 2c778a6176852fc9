// group-encoding.js — lazily installed global group: TextEncoder, TextDecoder.

export { TextEncoder, TextDecoder } from './text-encoding.js';
