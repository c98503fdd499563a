// media.js: files through chat-media (docs/media.md): announce the upload
// (the server checks type, size and membership and signs a PUT URL), PUT the
// bytes with progress, and retry an interrupted PUT.  The send that carries
// the upload then goes through the outbox like any other (same idempotent
// client_msg_id on every retry).

import { ChatError } from './errors.js';
import { backoffDelay } from './connection.js';

/** Bytes of a File/Blob, ArrayBuffer, typed array or Node Buffer. */
async function bytesOf(file) {
  if (file instanceof Uint8Array) return file;
  if (file instanceof ArrayBuffer) return new Uint8Array(file);
  if (file && typeof file.arrayBuffer === 'function') return new Uint8Array(await file.arrayBuffer());
  throw new TypeError('sendFile: file must be a File, Blob, ArrayBuffer or Uint8Array');
}

/** Lowercase hex SHA-256 of bytes (WebCrypto, also in Node). */
async function sha256Hex(bytes) {
  const d = new Uint8Array(await globalThis.crypto.subtle.digest('SHA-256', bytes));
  return Array.from(d, (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * The default PUT: XMLHttpRequest where there is one (it reports upload
 * progress), else fetch (progress at the end).  Resolves {status, body};
 * rejects on a network error.
 */
export function defaultPut(url, bytes, mime, onProgress) {
  const XHR = globalThis.XMLHttpRequest;
  if (XHR) {
    return new Promise((resolve, reject) => {
      const x = new XHR();
      x.open('PUT', url);
      x.setRequestHeader('Content-Type', mime);
      x.upload.onprogress = (e) => onProgress(e.loaded);
      x.onload = () => resolve({ status: x.status, body: x.responseText });
      x.onerror = () => reject(new ChatError('upload interrupted', { code: 'network' }));
      x.onabort = x.onerror;
      x.send(bytes);
    });
  }
  return fetch(url, { method: 'PUT', body: bytes, headers: { 'Content-Type': mime } })
    .then(async (r) => { onProgress(bytes.length); return { status: r.status, body: await r.text() }; },
      () => { throw new ChatError('upload interrupted', { code: 'network' }); });
}

/** Resolves a media URL the server handed out (relative to chat-media's origin). */
export function absoluteMediaUrl(host, url) {
  if (/^https?:\/\//.test(url)) return url;
  const base = host.mediaOrigin || host.url.replace(/^ws/, 'http').replace(/\/ws(\?.*)?$/, '');
  return new URL(url, base).toString();
}

/**
 * Uploads file to conversation (purpose 'avatar': a picture, to no
 * conversation for a profile picture): resolves {upload, mime, size, name, width,
 * height, thumbnail}.  A PUT that fails on the way (network, 5xx) is tried
 * again on the same URL; one whose URL expired (403) gets a new upload; 409
 * (finished by an earlier attempt whose answer was lost) counts as done.
 * Other statuses reject with code "http_<status>" (400 size or hash, 413,
 * 415 content not of the announced type).
 */
export async function uploadFile(host, conversation, file, { mime, name, onProgress = () => {}, maxAttempts = 5, put = defaultPut, purpose } = {}) {
  const bytes = await bytesOf(file);
  mime = (mime || file.type || 'application/octet-stream').toLowerCase();
  name = purpose === 'avatar' ? null : (name ?? file.name ?? null);
  const sha256 = await sha256Hex(bytes);
  // purpose "avatar" (docs/media.md "Avatars"): a picture, no name; without
  // a conversation a profile picture of the user
  const announce = purpose === 'avatar'
    ? { purpose, ...(conversation != null ? { conversation } : {}), mime, size: bytes.length, sha256 }
    : { conversation, mime, size: bytes.length, sha256, name };
  let up = null;
  for (let attempt = 1; ; attempt++) {
    if (!up) up = await host.request('upload', announce);
    let r;
    try {
      onProgress(0, bytes.length);
      r = await put(absoluteMediaUrl(host, up.url), bytes, mime, (loaded) => onProgress(loaded, bytes.length));
    } catch (e) {
      r = { status: 0, error: e };
    }
    if (r.status === 201 || r.status === 409) {
      let info = {};
      try { info = JSON.parse(r.body || '{}'); } catch { /* 409 has no details */ }
      onProgress(bytes.length, bytes.length);
      return { upload: up.upload, mime, size: bytes.length, name, width: info.width || undefined, height: info.height || undefined, thumbnail: !!info.thumbnail };
    }
    const retryable = r.status === 0 || r.status >= 500 || r.status === 403;
    if (!retryable || attempt >= maxAttempts) {
      throw new ChatError(`upload failed: HTTP ${r.status}`, { code: r.status ? `http_${r.status}` : 'network' });
    }
    if (r.status === 403) up = null;  // expired: announce it again
    await new Promise((res) => setTimeout(res, backoffDelay(attempt, { base: host.backoffBase, cap: host.backoffCap, random: host.random })));
  }
}
