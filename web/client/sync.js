// sync.js: the sync loop run after every hello and on {"type":"resync"}:
// `sync` page by page, each page acked before the next, until `more` is
// false.  Message pushes (and the caller's own sends) that arrive meanwhile
// are held and applied after the loop, so a page and a push of the same
// message count once, in seq order.

import { ChatError, isConnectionGone } from './errors.js';
import { resultList } from './requests.js';

/**
 * The sync loop of one client.  Uses of the host (ChatClient): `state`,
 * `syncLimit`, `request`, `_emit` and `_convs` (ingest, ingestLive,
 * flushAcks, get).
 */
export class SyncLoop {
  constructor(host) {
    this.host = host;
    this.running = false;
    this.generation = 0;     // moves on with every loop and every lost socket
    this.resyncWanted = false;
    this.held = [];          // {f, source} that arrived during the loop
  }

  /**
   * A live message ('live') or an answered send ('own'): applied now, or
   * after the running loop (earlier messages may still be on their way).
   */
  deliver(f, source) {
    if (this.running) this.held.push({ f, source });
    else this.apply(f, source);
  }

  /** Applies one delivered message to the conversation state. */
  apply(f, source) {
    if (source === 'own') this.host._convs.ingest(f, 'own');
    else this.host._convs.ingestLive(f);
  }

  /** The socket died: its loop is over; what is held waits for the next loop. */
  abort() {
    this.running = false;
    this.generation++;
  }

  /** Runs `sync` until `more` is false, acking each page; reruns when a resync came meanwhile. */
  async run() {
    const host = this.host;
    if (this.running) { this.resyncWanted = true; return; }
    this.running = true;
    const generation = ++this.generation;
    const touched = new Set();
    try {
      do {
        this.resyncWanted = false;
        for (let page = 0; page < 1000; page++) {
          const res = await host.request('sync', { limit: host.syncLimit });
          const msgs = resultList(res, 'messages');
          // E2E envelopes waiting for this device (client/e2e.js acks them).
          if (Array.isArray(res?.to_device) && res.to_device.length) host._emit('to_device_batch', { entries: res.to_device });
          for (const m of msgs) { touched.add(m.conversation); host._convs.ingest(m, 'sync'); }
          await host._convs.flushAcks();
          if (!res?.more || msgs.length === 0) break;
          // The next page starts after the acked cursors; without progress it would repeat.
          if (msgs.every((m) => host._convs.get(m.conversation).acked < m.seq)) {
            throw new ChatError('sync made no progress (messages above a gap cannot be acked)', { code: 'sync' });
          }
        }
      } while (this.resyncWanted && host.state === 'open');
    } catch (e) {
      if (!isConnectionGone(e)) host._emit('error', new ChatError(`sync failed: ${e.message}`, { code: e.code }));
    } finally {
      // A loop of a dead connection must not end the loop of the next one.
      if (generation === this.generation) {
        this.running = false;
        const held = this.held;
        this.held = [];
        for (const { f, source } of held) this.apply(f, source);
        if (host.state === 'open') host._emit('synced', { conversations: [...touched] });
      }
    }
  }
}
