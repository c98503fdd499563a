// The "other client" of 24-media's 100 MiB test, in a process of its own
// so that the test process's own work (streaming and hashing 100 MiB) does
// not show up as ping latency: connects with the token in argv[2] to the
// WebSocket URL argv[3], pings every 10 ms, prints "ready" once connected
// and, when stdin closes, the RTTs in ms as a JSON array, then exits.
import WebSocket from 'ws';

const ws = new WebSocket(`${process.argv[3]}?token=${encodeURIComponent(process.argv[2])}`, ['chat.v1'], { perMessageDeflate: false });
const rtts = [];
let running = true;
ws.on('error', (e) => { console.error(String(e)); process.exit(1); });
ws.on('message', async (data) => {
  if (JSON.parse(data).type !== 'hello' || !running) return;
  console.log('ready');
  while (running) {
    const t0 = process.hrtime.bigint();
    await new Promise((resolve) => { ws.once('pong', resolve); ws.ping(); });
    rtts.push(Number(process.hrtime.bigint() - t0) / 1e6);
    await new Promise((r) => setTimeout(r, 10));
  }
});
process.stdin.on('data', () => {});
process.stdin.on('end', () => {
  running = false;
  console.log(JSON.stringify(rtts));
  ws.terminate();
  process.exit(0);
});
