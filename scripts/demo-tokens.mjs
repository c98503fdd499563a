// demo-tokens.mjs: the "application backend" of `make demo`, reduced to the
// one thing the page needs from it: a fresh token before the current one
// expires.  A real application does this behind its own login; here each
// demo link carries a random session key that stands for that login.
//
//   node scripts/demo-tokens.mjs HOST PORT SESSIONS_JSON [TTL]
//
// SESSIONS_JSON maps session keys to {user, device}.  GET /token?session=K
// answers {"token": chat.issue_token(user, device, TTL)} (psql, with the
// connection settings of the environment: PGHOST, PGPORT, PGUSER,
// PGDATABASE and PSQL for the binary).
import http from 'node:http';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';

const [host, port, sessionsFile, ttl = '1 hour'] = process.argv.slice(2);
if (!host || !port || !sessionsFile) {
  console.error('usage: demo-tokens.mjs HOST PORT SESSIONS_JSON [TTL]');
  process.exit(2);
}
const sessions = JSON.parse(readFileSync(sessionsFile, 'utf8'));

// Issues a token with chat.issue_token; the ids are integers from our own file.
function issue({ user, device }) {
  const sql = `SELECT chat.issue_token(${Number(user)}, ${Number(device)}, '${ttl.replace(/'/g, "''")}'::interval)`;
  return new Promise((resolve, reject) => {
    execFile(process.env.PSQL || 'psql', ['-qAtX', '-v', 'ON_ERROR_STOP=1', '-c', sql], { timeout: 10000 },
      (err, stdout, stderr) => (err ? reject(new Error(stderr || err.message)) : resolve(stdout.trim())));
  });
}

http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://localhost');
  // The page is served by the gateway, on another port: a cross-origin fetch.
  const headers = { 'Access-Control-Allow-Origin': '*', 'Cache-Control': 'no-store' };
  const who = url.pathname === '/token' && Object.hasOwn(sessions, url.searchParams.get('session') ?? '')
    ? sessions[url.searchParams.get('session')] : null;
  if (!who) {
    res.writeHead(req.method === 'OPTIONS' ? 204 : 404, headers).end();
    return;
  }
  try {
    const token = await issue(who);
    res.writeHead(200, { ...headers, 'Content-Type': 'application/json' }).end(JSON.stringify({ token }));
  } catch (e) {
    console.error(`demo-tokens: ${e.message}`);
    res.writeHead(500, headers).end();
  }
}).listen(Number(port), host, () => console.error(`demo-tokens: listening on ${host}:${port}`));
