// media.js: attachments on the demo page: images as thumbnails (full size on
// click), voice notes and videos playable, documents downloadable with name
// and size; in secret chats, files decrypted here with the key their
// encrypted message carries.  Media URLs are signed and expire, so each is asked for when
// first shown and the element is kept (re-renders move it, never refetch).

import { el } from './dom.js';
import { decryptFile } from '../client/e2e.js';

let client = null;
const views = new Map();  // attachment id -> element

/** The ChatClient whose mediaUrl signs the URLs. */
export function setMediaClient(c) { client = c; }

/** "1.2 MB" */
export function fmtSize(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1048576) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1048576).toFixed(1)} MB`;
}

/** Sets attribute `attr` of `node` to the signed URL of attachment a. */
function fill(node, a, attr, thumbnail = false) {
  client.mediaUrl(a.id, { thumbnail }).then((url) => { node[attr] = url; }, () => { node.classList.add('broken'); });
}

/** The element showing attachment a (made once per attachment). */
export function attachmentView(a) {
  if (views.has(a.id)) return views.get(a.id);
  let v;
  const kind = a.mime.split('/')[0];
  if (kind === 'image' && a.thumbnail) {
    const img = el('img', { class: 'thumb', alt: a.name || 'picture', width: a.width && a.height ? Math.round(320 * Math.min(1, a.width / Math.max(a.width, a.height))) : null });
    fill(img, a, 'src', true);
    // full size on click (a new signed URL: the thumbnail's is another)
    img.addEventListener('click', () => {
      if (img.dataset.full) { img.classList.toggle('full'); return; }
      img.dataset.full = '1';
      img.classList.add('full');
      fill(img, a, 'src');
    });
    v = el('figure', { class: 'attachment image', dataset: { attachment: a.id, mime: a.mime } }, img);
  } else if (kind === 'audio' || kind === 'video') {
    const media = el(kind, { controls: true, preload: 'metadata', class: kind });
    fill(media, a, 'src');
    v = el('figure', { class: `attachment ${kind}`, dataset: { attachment: a.id, mime: a.mime } }, media,
      el('figcaption', {}, `${a.name || kind} · ${fmtSize(a.size)}`));
  } else {
    const link = el('a', { class: 'document', download: a.name || 'file', href: '#' }, `${a.name || 'file'} (${fmtSize(a.size)})`);
    fill(link, a, 'href');
    v = el('div', { class: 'attachment document', dataset: { attachment: a.id, mime: a.mime } }, link);
  }
  views.set(a.id, v);
  return v;
}

/**
 * Fetches attachment a (ciphertext) and decrypts it with the key of meta
 * (client/e2e.js decryptFile): a Blob URL.  Only images, audio and video
 * keep their type; anything else is a plain download (never a page of
 * this origin).
 */
async function decryptedUrl(a, meta, kind) {
  const r = await fetch(await client.mediaUrl(a.id));
  if (!r.ok) throw new Error(`download of ${a.id} failed: ${r.status}`);
  const bytes = decryptFile(new Uint8Array(await r.arrayBuffer()), meta);
  const type = ['image', 'audio', 'video'].includes(kind) ? meta.mime : 'application/octet-stream';
  return URL.createObjectURL(new Blob([bytes], { type }));
}

/**
 * The element showing attachment a of an e2e message: meta is its entry
 * in the decrypted body ({k, iv, name, mime, size}); undefined while the
 * message is not decrypted (a placeholder then, not kept).
 */
export function e2eAttachmentView(a, meta) {
  if (!meta) return el('div', { class: 'attachment document e2e-pending', dataset: { attachment: a.id } }, `🔒 encrypted file (${fmtSize(a.size)})`);
  const key = `e2e:${a.id}`;
  if (views.has(key)) return views.get(key);
  const kind = String(meta.mime || '').split('/')[0];
  const name = String(meta.name || 'file');
  const size = fmtSize(Number(meta.size ?? a.size) || 0);
  const dataset = { attachment: a.id, mime: String(meta.mime || '') };
  let node, attr, v;
  if (kind === 'image') {
    node = el('img', { class: 'thumb', alt: name });
    node.addEventListener('click', () => node.classList.toggle('full'));
    v = el('figure', { class: 'attachment image e2e', dataset }, node);
    attr = 'src';
  } else if (kind === 'audio' || kind === 'video') {
    node = el(kind, { controls: true, preload: 'metadata', class: kind });
    v = el('figure', { class: `attachment ${kind} e2e`, dataset }, node, el('figcaption', {}, `${name} · ${size}`));
    attr = 'src';
  } else {
    node = el('a', { class: 'document', download: name, href: '#' }, `${name} (${size})`);
    v = el('div', { class: 'attachment document e2e', dataset }, node);
    attr = 'href';
  }
  decryptedUrl(a, meta, kind).then((url) => { node[attr] = url; }, () => { v.classList.add('broken'); });
  views.set(key, v);
  return v;
}
