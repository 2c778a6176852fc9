// group-url.js — lazily installed global group: URL, URLSearchParams (whatwg-url, with tr46 for
// international domain names); it reaches TextEncoder/TextDecoder through the globals.
import './array-buffer-resizable.js';

export { URL, URLSearchParams } from 'whatwg-url';
