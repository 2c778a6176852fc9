// group-dom-exception.js — lazily installed global group: DOMException.

export { DOMException } from './dom-exception.js';
