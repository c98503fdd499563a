// dom.js: the few DOM helpers of the demo page.

/** The element with id `id`. */
export const $ = (id) => document.getElementById(id);

/**
 * A new element: attrs `class`, `dataset` (an object), `on<event>`
 * (a listener) or any attribute (true: present, false/null: left out).
 */
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) if (c !== null && c !== undefined && c !== false) e.append(c);
  return e;
}

/** Shows `text` for 6 s ('error' toasts are alerts, others status). */
export function toast(text, kind = 'error') {
  const t = el('div', { class: `toast ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text);
  $('toasts').append(t);
  setTimeout(() => t.remove(), 6000);
}
