// media.js: attachments on the demo page: images as thumbnails (full size on
// click), voice notes and videos playable, documents downloadable with name
// and size.  Media URLs are signed and expire, so each is asked for when
// first shown and the element is kept (re-renders move it, never refetch).

import { el } from './dom.js';

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
