// One process of scenario 7's client churn: connects and disconnects as
// fast as `concurrency` loops allow, for `seconds`, from its own loopback
// source addresses (the gateway counts unauthenticated connections per
// address, and each address has its own ephemeral ports).  Raw sockets and
// a hand-written upgrade keep the client cheap.  In turn:
//   tcp        connect, then reset
//   upgrade    WebSocket upgrade without a token, then drop the socket
//   auth       upgrade with a token, wait for hello, close frame 1000
//   abort      upgrade with a token, drop the socket before hello
// Prints one JSON line of counts on exit.
//   node churn.mjs '{"host":..,"port":..,"seconds":..,"concurrency":..,"sources":[..],"tokens":[..]}'
import net from 'node:net';
import crypto from 'node:crypto';

const o = JSON.parse(process.argv[2]);
const counts = { tcp: 0, upgrade: 0, auth: 0, abort: 0, hello: 0, refused: 0, errors: 0 };
const kinds = ['tcp', 'upgrade', 'auth', 'abort'];
const end = Date.now() + o.seconds * 1000;
let seq = 0;

// One connection of kind, from source; resolves when it is gone.
function once(kind, source) {
  return new Promise((resolve) => {
    const s = net.connect({ host: o.host, port: o.port, localAddress: source });
    let buf = '';
    let done = false, helloSeen = false;
    const finish = (err) => {
      if (done) return;
      done = true;
      clearTimeout(t);
      if (err) { counts.errors++; counts[`errors_${kind}`] = (counts[`errors_${kind}`] ?? 0) + 1; }
      s.destroy();
      resolve();
    };
    const t = setTimeout(() => finish(true), 5000);
    s.on('error', () => finish(true));
    s.on('close', () => finish(false));
    s.on('connect', () => {
      counts[kind]++;
      if (kind === 'tcp') { s.resetAndDestroy(); finish(false); return; }
      const tok = kind === 'upgrade' ? '' : `?token=${encodeURIComponent(o.tokens[seq % o.tokens.length])}`;
      s.write(`GET /ws${tok} HTTP/1.1\r\nHost: ${o.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        `Sec-WebSocket-Key: ${crypto.randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n` +
        'Sec-WebSocket-Protocol: chat.v1\r\n\r\n');
    });
    s.on('data', (d) => {
      buf += d.toString('latin1');
      if (!buf.startsWith('HTTP/1.1 101')) {
        if (buf.includes('\r\n\r\n')) { counts.refused++; finish(false); }
        return;
      }
      if (kind === 'upgrade' || kind === 'abort') { finish(false); return; }
      if (!helloSeen && buf.includes('"hello"')) {
        helloSeen = true;
        counts.hello++;
        // A masked close frame, code 1000, then the end of the stream.
        const mask = crypto.randomBytes(4);
        const payload = Buffer.from([0x03, 0xe8]).map((b, i) => b ^ mask[i]);
        s.end(Buffer.concat([Buffer.from([0x88, 0x82]), mask, payload]));
        setTimeout(() => finish(false), 200);
      }
    });
  });
}

// One loop: connection after connection until the end.
async function loop(i) {
  while (Date.now() < end) {
    const kind = kinds[seq++ % kinds.length];
    await once(kind, o.sources[(seq + i) % o.sources.length]);
  }
}

await Promise.all(Array.from({ length: o.concurrency }, (_, i) => loop(i)));
console.log(JSON.stringify(counts));
