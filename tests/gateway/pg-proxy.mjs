// A TCP proxy between a gateway and PostgreSQL that the tests steer, to
// play a database that goes silent or slow (this kernel has no netem):
//   proxy.blackhole()   nothing passes either way (bytes are held, as a
//                       partitioned link holds them; the TCP connections
//                       stay up, so keepalives are answered: only the
//                       gateway's own deadline and probe can notice)
//   proxy.resume()      the held bytes pass, normal service
//   proxy.delay(ms)     every query (each Sync or simple Query message of
//                       the frontend protocol) costs ms more, one after
//                       the other per connection: a database that serves
//                       1000/ms queries per second per connection
// Usage: const p = await PgProxy.start({ port: PGPORT }); --dsn "host=127.0.0.1 port=${p.port} ..."
import net from 'node:net';

const SSL_REQUEST = 80877103, GSSENC_REQUEST = 80877104;

// One proxied connection: client socket, server socket, a release queue.
class Link {
  constructor(proxy, client) {
    this.proxy = proxy;
    this.client = client;
    this.server = net.connect(proxy.target.port, proxy.target.host);
    this.startup = true;     // untyped messages until the startup packet
    this.pending = Buffer.alloc(0);
    this.queue = [];         // {buf, at} client -> server, in order
    this.held = [];          // server -> client while blackholed
    this.last = 0;           // release time of the last query
    this.timer = null;
    client.setNoDelay(true);
    this.server.setNoDelay(true);
    client.on('data', (d) => this.fromClient(d));
    this.server.on('data', (d) => this.fromServer(d));
    const end = () => this.close();
    for (const s of [client, this.server]) { s.on('error', end); s.on('close', end); }
  }

  // Splits the client's bytes into frontend messages; each query costs the delay.
  fromClient(d) {
    this.pending = Buffer.concat([this.pending, d]);
    for (;;) {
      let len, query = false;
      if (this.startup) {
        if (this.pending.length < 8) break;
        len = this.pending.readInt32BE(0);
        const code = this.pending.readInt32BE(4);
        if (this.pending.length < len) break;
        if (code !== SSL_REQUEST && code !== GSSENC_REQUEST) this.startup = false;
      } else {
        if (this.pending.length < 5) break;
        len = this.pending.readInt32BE(1) + 1;
        if (this.pending.length < len) break;
        const type = String.fromCharCode(this.pending[0]);
        query = type === 'S' || type === 'Q';
      }
      const buf = this.pending.subarray(0, len);
      this.pending = this.pending.subarray(len);
      const now = Date.now();
      let at = Math.max(now, this.last);
      if (query && this.proxy.delayMs > 0) at += this.proxy.delayMs;
      this.last = at;
      this.queue.push({ buf: Buffer.from(buf), at });
    }
    this.pump();
  }

  fromServer(d) {
    if (this.proxy.blackholed) this.held.push(d);
    else this.client.write(d);
  }

  // Writes the client's messages that are due (none while blackholed).
  pump() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.proxy.blackholed) return;
    const now = Date.now();
    while (this.queue.length && this.queue[0].at <= now) this.server.write(this.queue.shift().buf);
    if (this.queue.length) this.timer = setTimeout(() => this.pump(), this.queue[0].at - now);
  }

  // Lets what was held pass.
  release() {
    for (const d of this.held) this.client.write(d);
    this.held = [];
    this.pump();
  }

  close() {
    clearTimeout(this.timer);
    this.client.destroy();
    this.server.destroy();
    this.proxy.links.delete(this);
  }
}

export class PgProxy {
  // Listens on 127.0.0.1 (a free port) and forwards to target {host, port}.
  static async start({ host = '127.0.0.1', port }) {
    const p = new PgProxy();
    p.target = { host, port: Number(port) };
    p.links = new Set();
    p.blackholed = false;
    p.delayMs = 0;
    p.server = net.createServer((c) => p.links.add(new Link(p, c)));
    await new Promise((resolve, reject) => { p.server.once('error', reject); p.server.listen(0, '127.0.0.1', resolve); });
    p.port = p.server.address().port;
    return p;
  }

  blackhole() { this.blackholed = true; }
  resume() { this.blackholed = false; for (const l of this.links) l.release(); }
  delay(ms) { this.delayMs = ms; }
  get connections() { return this.links.size; }

  // A gateway --dsn for database db through this proxy.
  dsn(db) { return `dbname=${db} host=127.0.0.1 port=${this.port}${process.env.PGUSER ? ` user=${process.env.PGUSER}` : ''}`; }

  async stop() {
    for (const l of [...this.links]) l.close();
    await new Promise((r) => this.server.close(r));
  }
}
