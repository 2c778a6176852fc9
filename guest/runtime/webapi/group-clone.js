// group-clone.js — lazily installed global group: structuredClone.

export { structuredClone } from './structured-clone.js';
