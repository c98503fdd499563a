// token.js: reading a JWT's claims (never verifying: the gateway does) and
// when to refresh it.

/**
 * The claims (payload) of a JWT, decoded without verifying it; null when
 * the token is not a JWT.
 * @param {string} jwt
 * @returns {object|null}
 */
export function tokenClaims(jwt) {
  try {
    const part = String(jwt).split('.')[1];
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '=');
    const json = typeof atob === 'function' ? atob(b64) : Buffer.from(b64, 'base64').toString('binary');
    const claims = JSON.parse(json);
    return claims !== null && typeof claims === 'object' ? claims : null;
  } catch {
    return null;
  }
}

/**
 * The `exp` claim (unix seconds) of a JWT, read without verifying it (the
 * gateway verifies); null when the token has none or is not a JWT.
 * @param {string} jwt
 * @returns {number|null}
 */
export function tokenExp(jwt) {
  const claims = tokenClaims(jwt);
  if (!claims) return null;
  return Number.isFinite(Number(claims.exp)) ? Number(claims.exp) : null;
}

/**
 * Milliseconds from `nowMs` until a token expiring at `exp` (unix seconds)
 * should be refreshed: `margin` ms before exp, or halfway when less than
 * twice the margin is left.
 * @param {number} exp @param {number} nowMs @param {number} margin
 * @returns {number}
 */
export function refreshDelay(exp, nowMs, margin) {
  const left = exp * 1000 - nowMs;
  if (left <= 0) return 0;
  return left >= 2 * margin ? left - margin : Math.floor(left / 2);
}
