// avatars.js: profile and group pictures (docs/media.md "Avatars").  A
// picture is an upload with purpose "avatar" (a profile picture to no
// conversation, a group's to the group); its URLs are signed and expire
// (chat.media_url_ttl), so they are cached per attachment until shortly
// before they expire, and one request is shared by every caller that asks
// meanwhile.  A picture the user may not see (P0002: replaced or gone;
// 42501: its owner blocked the user) resolves null, remembered a minute.

/** Refetch a URL this long before it expires (ms). */
const EXPIRY_MARGIN = 30000;
/** How long "no picture" is remembered (ms). */
const MISSING_TTL = 60000;
/** Answers meaning "no picture to show" rather than a failure. */
const MISSING = new Set(['P0002', '42501', '22P02']);

/** The attachment id an avatar source names: an id, a profile, a conversation row. */
export function avatarId(of) {
  if (of == null) return null;
  if (typeof of === 'string') return of || null;
  if (typeof of !== 'object') return null;
  if (typeof of.avatar === 'string' && of.avatar) return of.avatar;
  if (of.peer && typeof of.peer.avatar === 'string' && of.peer.avatar) return of.peer.avatar;
  return null;
}

/** Per-client cache of avatar URLs. */
export class AvatarCache {
  /** @param {{request: Function}} host @param {{now?: () => number}} [opts] */
  constructor(host, { now = Date.now } = {}) {
    this.host = host;
    this.now = now;
    this.entries = new Map();   // "<id>" or "<id>/thumb" -> {url, until, promise}
  }

  /** The URL of attachment id (thumbnail: its 320 px JPEG, else the file), or null. */
  url(id, thumbnail, resolve) {
    const key = thumbnail ? `${id}/thumb` : id;
    const e = this.entries.get(key);
    if (e && e.promise) return e.promise;
    if (e && e.until > this.now()) return Promise.resolve(e.url);
    const promise = this.host.request('media_url', { attachment: id, thumbnail })
      .then((r) => {
        const url = resolve(r.url);
        // expires_at is unix seconds; refetch EXPIRY_MARGIN before it
        this.entries.set(key, { url, until: Number(r.expires_at) * 1000 - EXPIRY_MARGIN });
        return url;
      }, (err) => {
        if (err && MISSING.has(err.code)) {
          this.entries.set(key, { url: null, until: this.now() + MISSING_TTL });
          return null;
        }
        this.entries.delete(key);
        throw err;
      });
    this.entries.set(key, { promise });
    return promise;
  }

  /** Forgets what is cached of attachment id (all of it when id is left out). */
  forget(id) {
    if (id == null) { this.entries.clear(); return; }
    this.entries.delete(id);
    this.entries.delete(`${id}/thumb`);
  }
}
