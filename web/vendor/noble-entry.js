// The cryptographic primitives of web/client/e2e.js, from the audited
// @noble packages (versions pinned in package-lock.json).  `make` bundles
// this file into web/vendor/noble.js (ESM, no network fetch at run time).
export { x25519, ed25519 } from '@noble/curves/ed25519.js';
export { hkdf } from '@noble/hashes/hkdf.js';
export { hmac } from '@noble/hashes/hmac.js';
export { sha256, sha512 } from '@noble/hashes/sha2.js';
export { gcm } from '@noble/ciphers/aes.js';
export { randomBytes } from '@noble/hashes/utils.js';
