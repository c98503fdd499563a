// errors.js: the error type of the client library.

/** Error raised for error frames, timeouts and disconnects. */
export class ChatError extends Error {
  /**
   * @param {string} message
   * @param {{code?: string, error?: string, request?: object}} [info]
   */
  constructor(message, { code, error, request } = {}) {
    super(message);
    this.name = 'ChatError';
    /** SQLSTATE of an error frame, or 'timeout' / 'disconnected' / 'closed'. */
    this.code = code;
    /** condition name of an error frame (e.g. insufficient_privilege). */
    this.error = error;
    this.request = request;
  }
}

/** Whether an error only says the connection went away (or the client was
 * closed): background work stops quietly on it, the next hello restarts it. */
export function isConnectionGone(err) {
  return err.code === 'disconnected' || err.code === 'closed';
}
