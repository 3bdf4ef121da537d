// One error type for everything that ends a request: it carries the HTTP status the client
// will see and a message the client can act on. Arvados' clients show `errors[0]` to users.
import type { ServerResponse } from 'node:http';

/** GatewayError is an error with the HTTP status it becomes and a user-facing message. */
export class GatewayError extends Error {
  readonly status: number;
  readonly headers: Record<string, string>;

  constructor(status: number, message: string, headers: Record<string, string> = {}) {
    super(message);
    this.name = 'GatewayError';
    this.status = status;
    this.headers = headers;
  }
}

/** errorBody renders messages in Arvados' JSON error form. */
export function errorBody(message: string): string {
  return JSON.stringify({ errors: [message] }) + '\n';
}

/** errorsIn reads the messages of an answer in Arvados' JSON error form, if it is one. */
export function errorsIn(text: string): string | undefined {
  try {
    const parsed = JSON.parse(text) as { errors?: unknown };
    if (Array.isArray(parsed.errors) && typeof parsed.errors[0] === 'string') {
      return parsed.errors.join('; ');
    }
  } catch {
    // Not JSON.
  }
  return undefined;
}

/** asGatewayError turns anything thrown into a GatewayError without leaking internals. */
export function asGatewayError(err: unknown): GatewayError {
  if (err instanceof GatewayError) return err;
  return new GatewayError(500, 'internal error');
}

/** sendError writes an error answer on a response that has not started yet. */
export function sendError(res: ServerResponse, err: GatewayError): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = errorBody(err.message);
  // A writeHead that threw earlier can leave a bad status message behind; this answer is
  // all-new, and if it still cannot be written the connection is cut rather than the error
  // thrown out of an error path.
  res.statusMessage = '';
  try {
    res.writeHead(err.status, {
      ...err.headers,
      'Content-Type': 'application/json',
      'Content-Length': Buffer.byteLength(body),
    });
  } catch {
    res.destroy();
    return;
  }
  res.end(body);
}

/** rawErrorResponse renders a whole HTTP/1.1 error answer for a socket we took over. */
export function rawErrorResponse(err: GatewayError): string {
  const body = errorBody(err.message);
  const extra = Object.entries(err.headers).map(([k, v]) => `${k}: ${v}\r\n`).join('');
  return (
    `HTTP/1.1 ${err.status} ${statusText(err.status)}\r\n` +
    'Content-Type: application/json\r\n' +
    `Content-Length: ${Buffer.byteLength(body)}\r\n` +
    extra +
    'Connection: close\r\n\r\n' +
    body
  );
}

function statusText(status: number): string {
  const texts: Record<number, string> = {
    400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found',
    405: 'Method Not Allowed', 408: 'Request Timeout', 410: 'Gone', 413: 'Payload Too Large',
    431: 'Request Header Fields Too Large', 500: 'Internal Server Error', 502: 'Bad Gateway',
    503: 'Service Unavailable', 504: 'Gateway Timeout',
  };
  return texts[status] ?? 'Error';
}
