// A small stand-in for the Arvados API server, for the demo and the tests. It answers the calls
// the gateway makes in Arvados' formats (records with `kind`, lists with `items` and
// `items_available`, errors as {"errors":[...],"error_token":...}) and decides readability the
// way Arvados does for these records: admins read everything, users what their requests touch.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomBytes } from 'node:crypto';

/** FakeUser is a user and the token that authenticates as them. */
export interface FakeUser {
  uuid: string;
  token: string;
  is_admin: boolean;
}

/** FakeContainer is a container record. */
export interface FakeContainer {
  uuid: string;
  state: string;
  gateway_address: string;
  interactive_session_started: boolean;
  log: string | null;
  /** runtime_token lets crunch-run update gateway_address, as a real container token does. */
  runtime_token?: string;
}

/** FakeContainerRequest is a container request record. */
export interface FakeContainerRequest {
  uuid: string;
  container_uuid: string | null;
  log_uuid: string | null;
  modified_by_user_uuid: string;
}

/** ApiCall is one call the fake received, for tests that check who used which token. */
export interface ApiCall {
  method: string;
  path: string;
  token: string;
  requestId: string;
}

/** FakeArvados is a running fake API server. */
export class FakeArvados {
  readonly users = new Map<string, FakeUser>();
  readonly containers = new Map<string, FakeContainer>();
  readonly requests = new Map<string, FakeContainerRequest>();
  readonly calls: ApiCall[] = [];
  /** failures maps "METHOD kind" (e.g. "PUT containers") to a status to answer once. */
  readonly failures = new Map<string, number>();
  /** afterAnswer hooks run once an answer has been sent, to change state between calls. */
  readonly afterAnswer: ((call: ApiCall) => void)[] = [];
  /** stallMs delays every answer, to test timeouts. */
  stallMs = 0;
  /** pageLimit caps list pages; undercount makes items_available claim more than exist. */
  pageLimit = 1000;
  undercount = 0;
  #server: Server;
  #rootToken: string;

  constructor(rootToken: string) {
    this.#rootToken = rootToken;
    // A client that goes away mid-body makes reading the body reject: that ends this request,
    // not the process the fake runs in.
    this.#server = createServer((req, res) => {
      this.#handle(req, res).catch(() => res.destroy());
    });
  }

  /** listen starts the server on loopback and returns its base URL. */
  async listen(port = 0): Promise<string> {
    await new Promise<void>((resolve) => this.#server.listen(port, '127.0.0.1', resolve));
    return `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}`;
  }

  /** close stops the server. */
  close(): Promise<void> {
    this.#server.closeAllConnections();
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }

  /** addUser adds a user with a fresh token. */
  addUser(uuid: string, isAdmin = false): FakeUser {
    const user = { uuid, token: `v2/${uuid}/${randomBytes(16).toString('hex')}`,
        is_admin: isAdmin };
    this.users.set(user.token, user);
    return user;
  }

  /** addContainer adds a container and, for each owner given, a request for it. */
  addContainer(uuid: string, state: string, owners: FakeUser[],
      gatewayAddress = ''): FakeContainer {
    const ctr: FakeContainer = {
      uuid, state, gateway_address: gatewayAddress, interactive_session_started: false,
      log: null,
      runtime_token: `v2/${uuid.replace('dz642', 'gj3su')}/${randomBytes(8).toString('hex')}`,
    };
    this.containers.set(uuid, ctr);
    owners.forEach((owner, i) => {
      const cr = `${uuid.slice(0, 5)}-xvhdp-${uuid.slice(12, 26)}${i}`;
      this.requests.set(cr, {
        uuid: cr, container_uuid: uuid, log_uuid: null, modified_by_user_uuid: owner.uuid,
      });
    });
    return ctr;
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://fake');
    const token = /^(?:Bearer|OAuth2) (.+)$/.exec(req.headers.authorization ?? '')?.[1] ?? '';
    const call = {
      method: req.method ?? '', path: url.pathname, token,
      requestId: String(req.headers['x-request-id'] ?? ''),
    };
    this.calls.push(call);
    res.once('finish', () => this.afterAnswer.forEach((hook) => hook(call)));
    let body = '';
    for await (const chunk of req) body += chunk;
    if (this.stallMs > 0) await new Promise((r) => setTimeout(r, this.stallMs));

    const parts = url.pathname.split('/').filter(Boolean);
    const kind = parts[2] ?? '';
    const failure = this.failures.get(`${req.method} ${kind}`);
    if (failure !== undefined) {
      this.failures.delete(`${req.method} ${kind}`);
      return error(res, failure, `injected failure ${failure}`);
    }
    const user = this.#who(token);
    const select = parseJson<string[]>(url.searchParams.get('select'));

    if (parts[0] !== 'arvados' || parts[1] !== 'v1') return error(res, 404, 'Path not found');
    if (kind === 'users' && parts[3] === 'current' && req.method === 'GET') {
      if (!user) return error(res, 401, 'Not logged in');
      return json(res, 200, { kind: 'arvados#user', uuid: user.uuid, is_admin: user.is_admin,
        is_active: true });
    }
    if (kind === 'containers' && parts.length === 4) {
      const ctr = this.containers.get(parts[3]);
      const runtime = ctr?.runtime_token !== undefined && ctr.runtime_token === token;
      if (!user && !runtime) return error(res, 401, 'Not logged in');
      if (!ctr || !(runtime || this.#canRead(user!, ctr.uuid))) {
        return error(res, 404, 'Path not found');
      }
      if (req.method === 'GET') return json(res, 200, pick({ kind: 'arvados#container', ...ctr },
          select));
      if (req.method === 'PUT') {
        if (!(runtime || user?.is_admin)) return error(res, 403, 'Forbidden');
        const attrs = parseJson<{ container?: Record<string, unknown> }>(body)?.container;
        if (!attrs) return error(res, 422, 'no container attributes given');
        for (const key of ['gateway_address', 'interactive_session_started', 'state', 'log']) {
          if (key in attrs) (ctr as unknown as Record<string, unknown>)[key] = attrs[key];
        }
        return json(res, 200, { kind: 'arvados#container', ...ctr, runtime_token: undefined });
      }
    }
    if (kind === 'container_requests' && parts.length === 4 && req.method === 'GET') {
      if (!user) return error(res, 401, 'Not logged in');
      const cr = this.requests.get(parts[3]);
      if (!cr || !(user.is_admin || cr.modified_by_user_uuid === user.uuid)) {
        return error(res, 404, 'Path not found');
      }
      return json(res, 200, pick({ kind: 'arvados#containerRequest', ...cr }, select));
    }
    if (kind === 'container_requests' && parts.length === 3 && req.method === 'GET') {
      if (!user) return error(res, 401, 'Not logged in');
      const filters = parseJson<[string, string, string][]>(url.searchParams.get('filters')) ?? [];
      let items = [...this.requests.values()]
        .filter((cr) => user.is_admin || cr.modified_by_user_uuid === user.uuid)
        .filter((cr) => filters.every(([f, op, v]) => op === '=' &&
          (cr as unknown as Record<string, unknown>)[f] === v))
        .sort((a, b) => a.uuid.localeCompare(b.uuid));
      const available = items.length + this.undercount;
      const offset = Number(url.searchParams.get('offset') ?? 0);
      const limit = Math.min(Number(url.searchParams.get('limit') ?? 100), this.pageLimit);
      items = items.slice(offset, offset + limit);
      return json(res, 200, {
        kind: 'arvados#containerRequestList', offset, limit, items_available: available,
        items: items.map((cr) => pick({ kind: 'arvados#containerRequest', ...cr }, select)),
      });
    }
    return error(res, 404, 'Path not found');
  }

  #who(token: string): FakeUser | undefined {
    if (token === '') return undefined;
    if (token === this.#rootToken) return { uuid: 'zzzzz-tpzed-000000000000000', token,
        is_admin: true };
    return this.users.get(token);
  }

  #canRead(user: FakeUser, containerUuid: string): boolean {
    if (user.is_admin) return true;
    return [...this.requests.values()].some((cr) =>
      cr.container_uuid === containerUuid && cr.modified_by_user_uuid === user.uuid);
  }
}

type Fields = Record<string, unknown>;

function pick(record: Fields, select: string[] | undefined): Fields {
  const { runtime_token: _, ...visible } = record;
  if (!select) return visible;
  const out: Record<string, unknown> = { kind: visible.kind };
  for (const key of select) out[key] = visible[key];
  return out;
}

function parseJson<T>(text: string | null): T | undefined {
  if (!text) return undefined;
  try {
    return JSON.parse(text) as T;
  } catch {
    return undefined;
  }
}

function json(res: ServerResponse, status: number, value: unknown): void {
  const body = JSON.stringify(value);
  res.writeHead(status, { 'Content-Type': 'application/json',
      'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

function error(res: ServerResponse, status: number, message: string): void {
  json(res, status, { errors: [message],
      error_token: `${Date.now()}+${randomBytes(4).toString('hex')}` });
}
