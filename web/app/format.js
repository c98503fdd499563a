// format.js: text of the demo page (times, presence, system messages,
// errors); no DOM, so the unit tests run it in Node.

/** A time as "14:05" today, "Nov 28 14:05" on other days; '' for no or a bad time. */
export function fmtTime(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  const today = new Date();
  const hm = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  return d.toDateString() === today.toDateString() ? hm : `${d.toLocaleDateString([], { month: 'short', day: 'numeric' })} ${hm}`;
}

/** Presence {online, last_seen} as "online", "offline" or "last seen ...". */
export function lastSeenText(p) {
  if (!p) return '';
  if (p.online) return 'online';
  if (!p.last_seen) return 'offline';
  return `last seen ${fmtTime(p.last_seen)}`;
}

/**
 * A system message (body: JSON {action, by, user, title, members}) as a
 * sentence; `who(user)` names a user ("you" for the reader).
 */
export function systemText(m, who) {
  let e;
  try { e = JSON.parse(m.body); } catch { return m.body || ''; }
  if (!e || typeof e !== 'object') return String(m.body);
  const cap = (s) => s[0].toUpperCase() + s.slice(1);
  const by = e.by != null ? who(Number(e.by)) : 'someone';
  switch (e.action) {
    case 'created': {
      const others = (e.members || []).map(Number).filter((u) => u !== Number(e.by)).map(who);
      return `${cap(by)} created the group${e.title ? ` “${e.title}”` : ''}${others.length ? ` with ${others.join(', ')}` : ''}`;
    }
    case 'added': return `${cap(by)} added ${who(Number(e.user))}`;
    case 'removed': return `${cap(by)} removed ${who(Number(e.user))}`;
    case 'left': return `${cap(who(Number(e.user)))} left`;
    case 'joined': return `${cap(who(Number(e.user)))} joined with an invite link`;
    case 'pinned': return `${cap(by)} pinned a message`;
    case 'unpinned': return `${cap(by)} unpinned a message`;
    case 'disappearing': return e.ttl ? `${cap(by)} set messages to disappear after ${ttlText(e.ttl)}` : `${cap(by)} turned off disappearing messages`;
    case 'broadcast': return `📣 ${e.title ? `${e.title}: ` : ''}${e.body ?? ''}`;
    case 'role': return `${cap(by)} made ${who(Number(e.user))} ${e.role}`;
    case 'updated': return `${cap(by)} changed the group${e.title !== undefined ? ` title to “${e.title ?? ''}”` : ''}`;
    case 'e2e': return `${cap(by)} turned on end-to-end encryption`;
    default: return e.action ? `${cap(by)}: ${e.action}` : String(m.body);
  }
}

/** A disappearing-messages timer in words (seconds in). */
export function ttlText(sec) {
  if (sec % 86400 === 0) return `${sec / 86400} day${sec === 86400 ? '' : 's'}`;
  if (sec % 3600 === 0) return `${sec / 3600} hour${sec === 3600 ? '' : 's'}`;
  if (sec % 60 === 0) return `${sec / 60} minute${sec === 60 ? '' : 's'}`;
  return `${sec} seconds`;
}

/** Labels of the error codes a user may meet (SQLSTATEs and the client's own). */
const ERROR_LABELS = {
  '42501': 'not allowed', P0002: 'not found', '22023': 'invalid input', '22001': 'message too long',
  '54000': 'group is full', '53400': 'slow down (rate limit)', '55000': 'no longer possible',
  timeout: 'no answer from the server', disconnected: 'connection lost', closed: 'disconnected',
};

/** A readable line for a ChatError (or any error), after `what` failed. */
export function errorText(e, what) {
  const why = e && e.message ? e.message : String(e);
  const label = e && ERROR_LABELS[e.code] ? `${ERROR_LABELS[e.code]}: ` : '';
  return `${what ? what + ' — ' : ''}${label}${why}`;
}
