// group-idna.js — internal group loaded on demand by idna-deferred.js: tr46 (UTS #46 mapping
// and Punycode) for international domain names in URLs.
export { toASCII, toUnicode } from 'tr46';
