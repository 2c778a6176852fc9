// group-base64.js — lazily installed global group: atob, btoa.

export { atob, btoa } from './base64.js';
