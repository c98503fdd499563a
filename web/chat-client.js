// chat-client.js: the pgchat client library (protocol chat.v1), ES modules
// without dependencies for browsers and Node >= 20.  It implements the client
// duties of docs/protocol.md: request/response by id with timeouts, sends retried
// with the same client_msg_id, per-conversation contiguous seq with gap repair
// and dedup, batched acks, sync until done, reconnect with exponential backoff
// and full jitter, typing debounce with a TTL on the receiving side.
//
//   import { ChatClient } from './chat-client.js';
//   const chat = new ChatClient({ url: 'ws://host/ws', token });
//   chat.on('message', (m) => render(m));
//   await chat.connect();
//   await chat.send(7, 'hi');
//
// This file is the entry point: the public class and the frame routing.
// Each duty lives in one module of client/ (see docs/web-client.md):
// connection.js (socket, reconnect, auth, token refresh), requests.js (ids,
// timeouts), outbox.js (send retries), conversation.js (seq, gaps, dedup,
// change log, acks), sync.js (the sync loop), typing.js, token.js, errors.js,
// media.js (file uploads through chat-media).

import { ChatError } from './client/errors.js';
import { tokenClaims, tokenExp, refreshDelay } from './client/token.js';
import { PROTOCOL, RESTART_ATTEMPTS, backoffDelay, Connection } from './client/connection.js';
import { Requests, resultList } from './client/requests.js';
import { Outbox, newClientMsgId } from './client/outbox.js';
import { Conversations, isLogEntry } from './client/conversation.js';
import { SyncLoop } from './client/sync.js';
import { Typing } from './client/typing.js';
import { uploadFile, absoluteMediaUrl } from './client/media.js';
import { AvatarCache, avatarId } from './client/avatars.js';

export { PROTOCOL, ChatError, tokenClaims, tokenExp, refreshDelay, backoffDelay, RESTART_ATTEMPTS, newClientMsgId, isLogEntry };

/**
 * A connection to chat-gateway that survives reconnects.
 *
 * Events (subscribe with `on(name, fn)`):
 * - `hello` {user, device, node, heartbeat}: authenticated (every (re)connect)
 * - `state` {state, attempt?, delay?, code?, reason?}: 'connecting', 'open',
 *   'reconnecting' (with the delay in ms), 'offline' (network down), 'closed'
 * - `synced` {conversations}: a sync loop finished; lists conversations that got messages
 * - `message` message event: a message newly stored (never twice for one seq);
 *   also the caller's own sent messages once the server assigned their seq (`own: true`).
 *   Change-log entries (kind `edit` / `delete`, see isLogEntry) are not `message`s:
 *   they take their seq like any message (contiguous top, acks) and are applied as
 * - `edit` {conversation, seq, body, edited_at, entry?, sender?} and `delete`
 *   {conversation, seq, deleted_at, entry?, sender?}: message `seq` was changed.
 *   From a log entry (`entry` is its seq; live, by sync or by gap repair, so an
 *   offline device learns every change) or from the server's live edit/delete
 *   event; each change is emitted once, and never an older one after a newer
 * - `receipt`, `read_state`, `presence`, `member`: server pushes as is
 * - `to_device`, `keys_low`, `identity_changed`: e2e server pushes as is (client/e2e.js);
 *   `to_device_batch` {entries}: the to-device envelopes a sync page returned
 * - `typing` {conversation, user, typing, expired?}: typing started or stopped
 *   (stopped also when the TTL ran out or the user's message arrived)
 * - `token` {exp}: the connection was re-authenticated with a fresh token (before the old one's exp)
 * - `error` ChatError: a background operation failed (auth rejected, gap repair failed, ...)
 */
export class ChatClient {
  /**
   * @param {object} opts
   * @param {string} opts.url WebSocket URL of the gateway, e.g. 'ws://127.0.0.1:8080/ws'
   * @param {string | (() => string | Promise<string>)} opts.token JWT, or a function that returns a fresh one
   *   (asked on every connect and, before the current token's exp, to re-authenticate the open connection)
   * @param {() => string | Promise<string>} [opts.getToken] same as a token function (wins over `token`;
   *   `refreshToken` is accepted as another name for it)
   * @param {number} [opts.refreshMargin=60000] ms before the token's exp at which a token function is asked
   *   for a new one (halfway through when the token lives less than twice this)
   * @param {typeof WebSocket} [opts.WebSocket] WebSocket constructor (default: globalThis.WebSocket; in Node pass `ws`)
   * @param {number} [opts.requestTimeout=10000] ms until an unanswered request fails
   * @param {number} [opts.ackDelay=200] ms to batch acks
   * @param {number} [opts.backoffBase=500] ms, reconnect backoff base
   * @param {number} [opts.backoffCap=30000] ms, reconnect backoff cap
   * @param {number} [opts.typingIdle=3000] ms without keystrokes after which `typing` sends stop
   * @param {number} [opts.typingRefresh=4000] ms between repeated "typing" while the user keeps typing
   * @param {number} [opts.typingTtl=6000] ms after which someone else's typing indicator expires
   * @param {number} [opts.typingInterval=3000] the server's rate limit (GUC chat.typing_interval): a start
   *   sent sooner after the previous typing event is dropped by the server, so it is repeated once the interval passed
   * @param {number} [opts.pingInterval=25000] ms between liveness pings (0: none)
   * @param {number} [opts.syncLimit=500] page size of sync
   * @param {number} [opts.maxSendAttempts=Infinity] attempts before a send promise rejects
   * @param {boolean} [opts.watchNetwork] follow the browser's online/offline events (default: when available)
   * @param {() => number} [opts.random=Math.random] randomness for the jitter
   * @param {() => number} [opts.now=Date.now] the clock of the avatar URL cache (ms)
   */
  constructor(opts) {
    if (!opts || !opts.url) throw new TypeError('ChatClient: url is required');
    this.url = opts.url;
    this.token = opts.getToken || opts.refreshToken || opts.token;
    this.refreshMargin = opts.refreshMargin ?? 60000;
    this.WebSocket = opts.WebSocket || globalThis.WebSocket;
    if (!this.WebSocket) throw new TypeError('ChatClient: no WebSocket constructor; pass opts.WebSocket');
    this.requestTimeout = opts.requestTimeout ?? 10000;
    this.ackDelay = opts.ackDelay ?? 200;
    this.backoffBase = opts.backoffBase ?? 500;
    this.backoffCap = opts.backoffCap ?? 30000;
    this.typingIdle = opts.typingIdle ?? 3000;
    this.typingRefresh = opts.typingRefresh ?? 4000;
    this.typingTtl = opts.typingTtl ?? 6000;
    this.typingInterval = opts.typingInterval ?? 3000;
    this.pingInterval = opts.pingInterval ?? 25000;
    this.syncLimit = opts.syncLimit ?? 500;
    this.maxSendAttempts = opts.maxSendAttempts ?? Infinity;
    this.random = opts.random || Math.random;

    /** 'idle' | 'connecting' | 'open' | 'reconnecting' | 'offline' | 'closed' */
    this.state = 'idle';
    /** user and device from the last hello */
    this.user = null;
    this.device = null;

    this._handlers = new Map();
    const watchNetwork = opts.watchNetwork ?? (typeof globalThis.addEventListener === 'function' && 'onLine' in (globalThis.navigator || {}));
    this._conn = new Connection(this, { watchNetwork });
    this._requests = new Requests(this);
    this._outbox = new Outbox(this);
    this._convs = new Conversations(this);
    this._sync = new SyncLoop(this);
    this._typing = new Typing(this);
    this._avatars = new AvatarCache(this, { now: opts.now });
  }

  // ---------------------------------------------------------------- events

  /**
   * Subscribes to an event.
   * @param {string} event
   * @param {(data: any) => void} fn
   * @returns {() => void} unsubscribe
   */
  on(event, fn) {
    if (!this._handlers.has(event)) this._handlers.set(event, new Set());
    this._handlers.get(event).add(fn);
    return () => this._handlers.get(event)?.delete(fn);
  }

  /** Calls the handlers of `event`; a throwing handler does not break the client. */
  _emit(event, data) {
    const hs = this._handlers.get(event);
    if (!hs) return;
    for (const fn of [...hs]) {
      try { fn(data); } catch (e) { if (event !== 'error') this._emit('error', e); }
    }
  }

  /** Moves to connection state `state` and tells the `state` handlers. */
  _setState(state, extra = {}) {
    this.state = state;
    this._emit('state', { state, ...extra });
  }

  // ------------------------------------------------------------ connection

  /**
   * Opens the connection (and keeps it open until `close()`).
   * @returns {Promise<{user:number, device:number, node:string}>} resolves on the first hello;
   *   rejects when the token is refused (close 4001)
   */
  connect() { return this._conn.connect(); }

  /**
   * Tells the client whether the network is up.  Down closes the socket
   * (browsers may keep a dead one open) and stops reconnecting; up reconnects
   * at once.  Browsers call this from their online/offline events.
   * @param {boolean} up
   */
  setNetwork(up) { this._conn.setNetwork(up); }

  /** Drops the current socket and reconnects (e.g. after a liveness ping timed out). */
  reconnect() { this._conn.reconnect(); }

  /** Closes the connection for good; pending requests and sends reject. */
  close() {
    this._conn.close();
    this._convs.stopAcks();
    this._typing.reset();
    const err = new ChatError('client closed', { code: 'closed' });
    if (!this._conn.drop(1000, 'client closed')) this._setState('closed');
    this._requests.failQueued(err);
    this._outbox.failAll(err);
    this._conn.settleConnect(err);
  }

  /** The current socket ended: its sync loop, its requests and its sends in flight are over. */
  _onDisconnect() {
    this._sync.abort();
    this._requests.failPending();
    this._outbox.disconnected();
  }

  // ---------------------------------------------------------------- frames

  /** Routes one frame of the gateway: a response, hello, or a push. */
  _onFrame(data) {
    let f;
    try { f = JSON.parse(typeof data === 'string' ? data : String(data)); } catch {
      this._emit('error', new ChatError('gateway sent a frame that is not JSON', { code: 'protocol' }));
      return;
    }
    if (f.id !== undefined && f.id !== null && (f.type === 'ok' || f.type === 'error' || f.type === 'pong')) {
      this._requests.onResponse(f);
      return;
    }
    switch (f.type) {
      case 'hello': this._onHello(f); break;
      case 'resync': this._sync.run(); break;
      case 'message': this._sync.deliver(f, 'live'); break;
      case 'typing': this._typing.onEvent(f); break;
      case 'edit': case 'delete': this._convs.onChangeEvent(f); break;
      case 'expired':  // disappearing messages the server tombstoned: a delete each
        if (Array.isArray(f.seqs)) {
          for (const seq of f.seqs) this._convs.onChangeEvent({ type: 'delete', conversation: f.conversation, seq, deleted_at: f.deleted_at });
        }
        this._emit('expired', f);
        break;
      case 'broadcast':  // the message waits in the service conversation: fetch it
        this._emit('broadcast', f);
        this._sync.run();
        break;
      case 'receipt': case 'read_state': case 'presence': case 'member':
        this._emit(f.type, f);
        break;
      default:
        if (f.type === 'error') this._emit('error', new ChatError(f.message || f.error || 'error', { code: f.code, error: f.error }));
        else this._emit(f.type, f);
    }
  }

  /** Authenticated: queued requests and unanswered sends go out first (sends keep
   * their order); the sync runs alongside, and live messages wait until it is done. */
  _onHello(f) {
    this.user = f.user;
    this.device = f.device;
    this.mediaOrigin = f.media_url || null;  // chat-media's origin (media URLs are relative to it)
    this._conn.attempt = 0;  // the backoff starts over
    this._conn.restarting = false;
    this._setState('open', { user: f.user, device: f.device, node: f.node });
    this._emit('hello', f);
    this._conn.settleConnect(null, f);
    this._conn.opened();
    this._requests.flushQueue();
    this._outbox.flush();
    this._sync.run();
  }

  // -------------------------------------------------------------- requests

  /**
   * Sends a request and waits for its response.
   * Requests made while disconnected wait for the connection (within the timeout).
   * @param {string} type request type (see docs/protocol.md)
   * @param {object} [fields]
   * @param {{timeout?: number}} [opts]
   * @returns {Promise<any>} the `result` of the ok frame; rejects with a ChatError
   */
  request(type, fields = {}, opts = {}) { return this._requests.request(type, fields, opts); }

  // ------------------------------------------------------------------ send

  /**
   * Sends a message.  Until answered, the send is retried with the same
   * client_msg_id (after a timeout, and after every reconnect), so the
   * server stores it once.
   * @param {number} conversation
   * @param {string} body
   * @param {{replyTo?: number, clientMsgId?: string, mentions?: number[], kind?: 'e2e'}} [opts]
   *   mentions: user ids of members mentioned (each once; they are pushed even
   *   when they muted the conversation); kind 'e2e': body is a ciphertext of
   *   client/e2e.js, for an end-to-end encrypted conversation (mentions are
   *   then ids only: the server never reads the body)
   * @returns {Promise<{conversation:number, seq:number, created_at:string, duplicate:boolean}>}
   */
  send(conversation, body, opts = {}) {
    this.typing(conversation, false);
    return this._outbox.add(conversation, body, opts);
  }

  // ----------------------------------------------------------------- media

  /**
   * Sends a file: uploads it to chat-media (announce, PUT with progress, an
   * interrupted PUT retried), then sends a message carrying it, with the
   * same idempotent retries as `send`.  Emits 'upload_progress'
   * {conversation, clientMsgId, name, loaded, total} while uploading.
   * @param {number} conversation
   * @param {File | Blob | ArrayBuffer | Uint8Array} file
   * `mentions` (user ids of members, as in `send`) go with the caption.
   * @param {{caption?: string, mime?: string, name?: string, clientMsgId?: string, mentions?: number[],
   *   onProgress?: (loaded: number, total: number) => void, maxAttempts?: number, put?: Function,
   *   kind?: 'e2e'}} [opts] kind 'e2e': the file is ciphertext of client/e2e.js encryptFile
   *   (mime application/octet-stream, no name) and the caption an e2e.encrypt ciphertext
   *   carrying its key, for an end-to-end encrypted conversation
   * @returns {Promise<{conversation:number, seq:number, created_at:string, duplicate:boolean, attachment: object}>}
   */
  async sendFile(conversation, file, opts = {}) {
    const clientMsgId = opts.clientMsgId || newClientMsgId();
    const up = await uploadFile(this, conversation, file, {
      mime: opts.mime, name: opts.name, maxAttempts: opts.maxAttempts, put: opts.put,
      onProgress: (loaded, total) => {
        if (opts.onProgress) opts.onProgress(loaded, total);
        this._emit('upload_progress', { conversation, clientMsgId, name: opts.name ?? file.name ?? null, loaded, total });
      },
    });
    const attachment = { id: up.upload, mime: up.mime, size: up.size };
    if (up.name) attachment.name = up.name;
    if (up.width) { attachment.width = up.width; attachment.height = up.height; }
    attachment.thumbnail = up.thumbnail;
    const result = await this._outbox.add(conversation, opts.caption || '', { clientMsgId, attachments: [attachment], mentions: opts.mentions, kind: opts.kind });
    return { ...result, attachment };
  }

  /**
   * A signed, expiring URL of an attachment (or its thumbnail) for this user.
   * @param {string} attachment id
   * @param {{thumbnail?: boolean}} [opts]
   * @returns {Promise<string>} absolute URL
   */
  async mediaUrl(attachment, { thumbnail = false } = {}) {
    const r = await this.request('media_url', { attachment, thumbnail });
    return absoluteMediaUrl(this, r.url);
  }

  // --------------------------------------------------------------- avatars

  /**
   * Uploads an image as the user's profile picture (an upload with purpose
   * "avatar", to no conversation) and sets it; everyone the user has not
   * blocked can then fetch it.  Resolves the attachment id.
   * @param {File | Blob | ArrayBuffer | Uint8Array} file an image (image/*)
   * @param {{mime?: string, onProgress?: Function, put?: Function, maxAttempts?: number}} [opts]
   * @returns {Promise<string>}
   */
  async setAvatar(file, opts = {}) {
    const up = await uploadFile(this, null, file, { ...opts, purpose: 'avatar' });
    await this.setProfile({ avatar: up.upload });
    return up.upload;
  }

  /**
   * Uploads an image to a group and makes it the group's picture (owners
   * and admins); its members can fetch it.  Resolves the attachment id.
   * @param {number} conversation
   * @param {File | Blob | ArrayBuffer | Uint8Array} file an image (image/*)
   * @param {{mime?: string, onProgress?: Function, put?: Function, maxAttempts?: number}} [opts]
   * @returns {Promise<string>}
   */
  async setGroupAvatar(conversation, file, opts = {}) {
    const up = await uploadFile(this, conversation, file, { ...opts, purpose: 'avatar' });
    await this.updateGroup(conversation, { avatar: up.upload });
    return up.upload;
  }

  /**
   * The URL of an avatar, or null when there is none or the user may not
   * see it.  `of` is an attachment id, a profile ({avatar}) or a
   * `conversations` row (a group's avatar, or a direct one's peer's).  URLs
   * are cached until 30 s before they expire; concurrent calls share one
   * request.  thumbnail (default): the 320 px JPEG, the full image when
   * there is none.
   * @param {string | {avatar?: string|null, peer?: {avatar?: string|null}} | null} of
   * @param {{thumbnail?: boolean}} [opts]
   * @returns {Promise<string|null>} absolute URL
   */
  async avatarUrl(of, { thumbnail = true } = {}) {
    const id = avatarId(of);
    if (!id) return null;
    const resolve = (url) => absoluteMediaUrl(this, url);
    const url = await this._avatars.url(id, thumbnail, resolve);
    if (url === null && thumbnail) return this._avatars.url(id, false, resolve);
    return url;
  }

  /**
   * Forgets the cached URL of an avatar (e.g. after an <img> failed to load
   * it: the next avatarUrl asks again).  No argument: forgets all.
   * @param {string | object} [of] as for avatarUrl
   */
  forgetAvatarUrl(of) { this._avatars.forget(of === undefined ? undefined : avatarId(of)); }

  /** Unanswered sends of this client, oldest first (for showing "sending…"). */
  get outbox() { return this._outbox.view(); }

  // ------------------------------------------------- seq tracking and acks

  /**
   * What the client has stored of a conversation: `top` is the highest
   * contiguous seq (undefined before the first message), `pending` the seqs
   * stored above a gap.
   * @param {number} conversation
   * @returns {{top: number|undefined, pending: number[], acked: number}}
   */
  conversationState(conversation) { return this._convs.state(conversation); }

  // ---------------------------------------------------------------- typing

  /**
   * Reports the local user's typing, debounced: call it on every keystroke
   * (`typing(c)`) and with `false` when done.  Sends "typing" once, repeats
   * it every typingRefresh ms while keystrokes continue, and sends "stopped"
   * after typingIdle ms without one.
   * @param {number} conversation
   * @param {boolean} [isTyping=true]
   */
  typing(conversation, isTyping = true) { this._typing.typing(conversation, isTyping); }

  /**
   * Users currently typing in a conversation (TTL applied).
   * @param {number} conversation
   * @returns {number[]}
   */
  typingUsers(conversation) { return this._typing.users(conversation); }

  // --------------------------------------------------- the other requests
  // Each result is read by its key in docs/protocol.md.

  /**
   * Edits one of the user's own messages.
   * @param {number} conversation @param {number} seq @param {string} body
   */
  edit(conversation, seq, body) { return this.request('edit', { conversation, seq, body }); }

  /**
   * Deletes a message (leaves a tombstone).
   * @param {number} conversation @param {number} seq
   */
  delete(conversation, seq) { return this.request('delete', { conversation, seq }); }

  /**
   * Marks everything up to `seq` read (sends read receipts).
   * @param {number} conversation @param {number} seq
   */
  markRead(conversation, seq) { return this.request('read', { conversation, seq }); }

  /**
   * The chat list, newest activity first.
   * @param {{limit?: number, before?: string}} [opts]
   * @returns {Promise<Array<{conversation:number, kind:string, title:string|null, last_seq:number,
   *   read_seq:number, unread:number, last_activity:string, last_message:object|null,
   *   peer:object|null}>>} peer: the other user's profile in a direct conversation
   */
  async conversations({ limit, before } = {}) {
    const fields = {};
    if (limit != null) fields.limit = limit;
    if (before != null) fields.before = before;
    return resultList(await this.request('conversations', fields), 'conversations');
  }

  /**
   * A page of history: the `limit` messages just below `beforeSeq` (or the
   * newest), ascending.  They count as stored for dedup.
   * @param {number} conversation
   * @param {{beforeSeq?: number, limit?: number}} [opts]
   * @returns {Promise<object[]>} messages
   */
  async history(conversation, { beforeSeq, limit } = {}) {
    const fields = { conversation };
    if (beforeSeq != null) fields.before_seq = beforeSeq;
    if (limit != null) fields.limit = limit;
    const msgs = resultList(await this.request('history', fields), 'messages');
    this._convs.ingestHistory(conversation, msgs, beforeSeq == null);
    return msgs;
  }

  /**
   * Messages after `afterSeq`, ascending (what gap repair uses).
   * @param {number} conversation @param {number} afterSeq @param {{limit?: number}} [opts]
   * @returns {Promise<object[]>}
   */
  async after(conversation, afterSeq, { limit } = {}) {
    const fields = { conversation, after_seq: afterSeq };
    if (limit != null) fields.limit = limit;
    return resultList(await this.request('after', fields), 'messages');
  }

  /**
   * The direct conversation with a user (created on first use).
   * @param {number} user @returns {Promise<number>} conversation id
   */
  async direct(user) { return Number((await this.request('direct', { user }))?.conversation); }

  /**
   * Creates a group; the caller becomes its owner.
   * @param {string} title @param {number[]} members
   * @returns {Promise<number>} conversation id
   */
  async createGroup(title, members = []) {
    return Number((await this.request('create_group', { title, members }))?.conversation);
  }

  /**
   * Adds a member to a group (owner/admin only).
   * @param {number} conversation @param {number} user @param {string} [role]
   */
  addMember(conversation, user, role) {
    return this.request('add_member', role ? { conversation, user, role } : { conversation, user });
  }

  /**
   * Removes a member (or yourself) from a group.
   * @param {number} conversation @param {number} user
   */
  removeMember(conversation, user) { return this.request('remove_member', { conversation, user }); }

  /**
   * Presence of users.
   * @param {number[]} users
   * @returns {Promise<Array<{user:number, online:boolean, last_seen:string|null}>>}
   */
  async presence(users) { return resultList(await this.request('presence', { users }), 'users'); }

  // Profiles, blocking, reports, privacy.

  /**
   * Public profiles of users (unknown ids are left out).
   * @param {number[]} users
   * @returns {Promise<Array<{user:number, handle:string, display_name:string|null,
   *   about:string|null, avatar:string|null}>>}
   */
  async profile(users) { return resultList(await this.request('profile', { users }), 'users'); }

  /**
   * Sets the own profile.  A field left out (or undefined/null) stays as it
   * is; '' clears it.
   * @param {{displayName?: string, about?: string, avatar?: string}} fields
   */
  setProfile({ displayName, about, avatar } = {}) {
    const fields = {};
    if (displayName != null) fields.display_name = displayName;
    if (about != null) fields.about = about;
    if (avatar != null) fields.avatar = avatar;
    return this.request('set_profile', fields);
  }

  /**
   * The user with a handle (regardless of case); null when there is none.
   * @param {string} handle
   * @returns {Promise<{user:number, handle:string, display_name:string|null,
   *   about:string|null, avatar:string|null}|null>}
   */
  async findUser(handle) {
    try {
      return (await this.request('find_user', { handle }))?.user ?? null;
    } catch (err) {
      if (err && err.code === 'P0002') return null;
      throw err;
    }
  }

  /**
   * Contact search: users whose handle or display name starts with query
   * (case ignored), your contacts first (`contact: true`), then handle
   * matches, then display-name matches; you and users who blocked you are
   * left out.  An empty or blank query resolves to [] without asking the
   * server; one over 64 characters is rejected by it (22001).
   * @param {string} query
   * @param {{limit?: number}} [opts] at most 50 (default 20)
   * @returns {Promise<Array<{user:number, handle:string, display_name:string|null,
   *   about:string|null, avatar:string|null, contact:boolean}>>}
   */
  async searchUsers(query, { limit } = {}) {
    if (typeof query !== 'string' || query.trim() === '') return [];
    const fields = { query };
    if (limit != null) fields.limit = limit;
    return resultList(await this.request('search_users', fields), 'users');
  }

  /**
   * Blocks a user: it can no longer send into your direct conversation,
   * and typing, presence and receipts stop between you.
   * @param {number} user
   */
  block(user) { return this.request('block', { user }); }

  /** Lifts a block. @param {number} user */
  unblock(user) { return this.request('unblock', { user }); }

  /** The users you have blocked. @returns {Promise<number[]>} */
  async blocked() { return resultList(await this.request('blocked', {}), 'users'); }

  /**
   * Reports a user, a conversation or a message (conversation and seq) to
   * the moderators.
   * @param {{user?: number, conversation?: number, seq?: number, reason: string}} report
   * @returns {Promise<number>} report id
   */
  async report({ user, conversation, seq, reason }) {
    const fields = { reason };
    if (user != null) fields.user = user;
    if (conversation != null) fields.conversation = conversation;
    if (seq != null) fields.seq = seq;
    return Number((await this.request('report', fields))?.report);
  }

  /**
   * Privacy: who sees your online state and last seen ('everyone',
   * 'contacts', 'nobody'), and whether your reads are sent as read
   * receipts.  A setting left out stays as it is.
   * @param {{lastSeen?: string, readReceipts?: boolean}} settings
   */
  setPrivacy({ lastSeen, readReceipts } = {}) {
    const fields = {};
    if (lastSeen != null) fields.last_seen = lastSeen;
    if (readReceipts != null) fields.read_receipts = readReceipts;
    return this.request('set_privacy', fields);
  }

  // ------------------------------------------------------------- groups

  /**
   * The active members of a conversation with their roles.
   * @param {number} conversation
   * @returns {Promise<{user:number, role:string, joined_at:string}[]>}
   */
  async members(conversation) { return resultList(await this.request('members', { conversation }), 'members'); }

  /** Sets a member's role ('admin' or 'member'); owners and admins only. @param {number} conversation @param {number} user @param {string} role */
  setRole(conversation, user, role) { return this.request('set_role', { conversation, user, role }); }

  /** Leaves a group. @param {number} conversation */
  leave(conversation) { return this.request('leave', { conversation }); }

  /**
   * Changes a group (owners and admins): a field left out (or null) stays,
   * '' clears title, description or avatar (an attachment id).
   * @param {number} conversation
   * @param {{title?: string, description?: string, avatar?: string, onlyAdminsSend?: boolean}} fields
   */
  updateGroup(conversation, { title, description, avatar, onlyAdminsSend } = {}) {
    const fields = { conversation };
    if (title != null) fields.title = title;
    if (description != null) fields.description = description;
    if (avatar != null) fields.avatar = avatar;
    if (onlyAdminsSend != null) fields.only_admins_send = onlyAdminsSend;
    return this.request('update_group', fields);
  }

  /**
   * Makes an invite link code for a group (owners and admins).
   * @param {number} conversation @param {{expiresIn?: number}} [opts] seconds; left out: until revoked
   * @returns {Promise<{code:string, expires_at:string|null}>}
   */
  inviteLink(conversation, { expiresIn } = {}) {
    const fields = { conversation };
    if (expiresIn != null) fields.expires_in = expiresIn;
    return this.request('invite_link', fields);
  }

  /** Revokes an invite code. @param {string} code */
  revokeInvite(code) { return this.request('revoke_invite', { code }); }

  /**
   * Joins the group of an invite code (error 55000: expired or revoked).
   * @param {string} code @returns {Promise<number>} the conversation
   */
  async join(code) { return Number((await this.request('join', { code }))?.conversation); }

  /**
   * When a message was delivered to and read by each member (sender or admin only).
   * @param {number} conversation @param {number} seq
   * @returns {Promise<{user:number, delivered_at:string|null, read_at:string|null}[]>}
   */
  async messageInfo(conversation, seq) {
    return resultList(await this.request('message_info', { conversation, seq }), 'members');
  }

  // ------------------------------------ reactions, pins, mute, search, timer

  /**
   * Adds (or with remove, takes back) the user's reaction to a message.  The
   * change comes back as a 'reaction' log entry (a message event).
   * @param {number} conversation @param {number} seq @param {string} emoji
   * @param {{remove?: boolean}} [opts]
   * @returns {Promise<{conversation:number, seq:number, entry:number|null}>} entry null: nothing changed
   */
  react(conversation, seq, emoji, { remove = false } = {}) {
    const fields = { conversation, seq, emoji };
    if (remove) fields.remove = true;
    return this.request('react', fields);
  }

  /** Pins (or unpins) a message. @param {number} conversation @param {number} seq @param {boolean} [pinned=true] */
  pin(conversation, seq, pinned = true) { return this.request('pin', { conversation, seq, pinned }); }

  /** The pinned seqs of a conversation, newest pin first. @param {number} conversation @returns {Promise<number[]>} */
  async pins(conversation) { return resultList(await this.request('pins', { conversation }), 'pins'); }

  /**
   * Mutes a conversation until a time (Date or ISO string); null unmutes.
   * Muted conversations push nothing unless the user is mentioned.
   * @param {number} conversation @param {Date|string|null} until
   */
  mute(conversation, until) {
    const value = until == null ? null : (until instanceof Date ? until.toISOString() : String(until));
    return this.request('mute', { conversation, until: value });
  }

  /**
   * Full-text search over the messages the user can see, best match first.
   * @param {string} query @param {{conversation?: number, limit?: number}} [opts]
   * @returns {Promise<object[]>} message objects
   */
  async search(query, { conversation, limit } = {}) {
    const fields = { query };
    if (conversation != null) fields.conversation = conversation;
    if (limit != null) fields.limit = limit;
    return resultList(await this.request('search', fields), 'messages');
  }

  /**
   * Sets (seconds) or clears (null) the disappearing-messages timer.
   * @param {number} conversation @param {number|null} ttl
   */
  setDisappearing(conversation, ttl) { return this.request('set_disappearing', { conversation, ttl: ttl ?? null }); }
}

/**
 * A message's reactions after applying a 'reaction' log entry to it: the
 * map {"<emoji>": [user ids]} with the entry's sender added under its emoji
 * (or removed when the entry says removed).  Returns a new map.
 * @param {Record<string, number[]>|undefined} reactions
 * @param {{sender:number, emoji:string, removed?:boolean}} entry
 * @returns {Record<string, number[]>}
 */
export function applyReaction(reactions, entry) {
  const out = {};
  for (const [k, v] of Object.entries(reactions || {})) out[k] = [...v];
  if (!entry || typeof entry.emoji !== 'string') return out;
  const list = (out[entry.emoji] || []).filter((u) => u !== entry.sender);
  if (!entry.removed) list.push(entry.sender);
  if (list.length) out[entry.emoji] = list; else delete out[entry.emoji];
  return out;
}
