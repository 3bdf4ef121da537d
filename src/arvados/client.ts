// A small Arvados API client on undici, for the few calls the gateway protocol names. The
// caller's token is passed through for lookups made on the caller's behalf; the root token is
// used only where the protocol says so (listing container requests, marking a session started).
import { Agent, request } from 'undici';
import { GatewayError, errorsIn } from '../errors.ts';

/** ApiCallObserver is told the outcome and duration of every API call, for metrics. */
export type ApiCallObserver = (call: string, outcome: string, seconds: number) => void;

/** ArvadosClientOptions configures an ArvadosClient. */
export interface ArvadosClientOptions {
  baseUrl: string;
  timeoutMs: number;
  insecure?: boolean;
  observe?: ApiCallObserver;
}

/** User is the part of a user record the gateway reads. */
export interface User {
  uuid: string;
  is_admin: boolean;
}

/** Container is the part of a container record the gateway reads. */
export interface Container {
  uuid: string;
  state: string;
  gateway_address: string;
  interactive_session_started?: boolean;
  log?: string | null;
}

/** ContainerRequest is the part of a container request record the gateway reads. */
export interface ContainerRequest {
  uuid: string;
  container_uuid: string | null;
  log_uuid: string | null;
  modified_by_user_uuid?: string;
}

const PAGE = 1000;

/** ArvadosClient makes the gateway's Arvados API calls. */
export class ArvadosClient {
  #base: URL;
  #timeoutMs: number;
  #dispatcher: Agent;
  #observe: ApiCallObserver;

  constructor(options: ArvadosClientOptions) {
    this.#base = new URL(options.baseUrl);
    this.#timeoutMs = options.timeoutMs;
    this.#observe = options.observe ?? (() => {});
    this.#dispatcher = new Agent({
      connect: { rejectUnauthorized: !options.insecure },
      headersTimeout: options.timeoutMs,
      bodyTimeout: options.timeoutMs,
    });
  }

  /** currentUser asks who the token belongs to. */
  currentUser(token: string, reqId: string): Promise<User> {
    return this.#call('users.current', 'GET', '/arvados/v1/users/current', token, reqId);
  }

  /** getContainer reads a container record with the given token. */
  getContainer(token: string, uuid: string, select: string[], reqId: string): Promise<Container> {
    const path = `/arvados/v1/containers/${uuid}?select=${enc(select)}`;
    return this.#call('containers.get', 'GET', path, token, reqId);
  }

  /** getContainerRequest reads a container request record with the given token. */
  getContainerRequest(token: string, uuid: string, reqId: string): Promise<ContainerRequest> {
    const select = ['uuid', 'container_uuid', 'log_uuid'];
    const path = `/arvados/v1/container_requests/${uuid}?select=${enc(select)}`;
    return this.#call('container_requests.get', 'GET', path, token, reqId);
  }

  /**
   * listAllRequestsFor pages through every container request for a container. It throws a
   * 500 when the pages add up to fewer items than the API said exist, since a permission check
   * must not pass on a partial list.
   */
  async listAllRequestsFor(
    token: string,
    containerUuid: string,
    reqId: string,
  ): Promise<ContainerRequest[]> {
    const items: ContainerRequest[] = [];
    let available = 0;
    for (;;) {
      const query =
        `filters=${enc([['container_uuid', '=', containerUuid]])}` +
        `&select=${enc(['uuid', 'modified_by_user_uuid'])}` +
        `&order=${enc(['uuid'])}&limit=${PAGE}&offset=${items.length}&count=exact`;
      const page = await this.#call<{ items: ContainerRequest[]; items_available: number }>(
        'container_requests.list', 'GET', `/arvados/v1/container_requests?${query}`, token, reqId,
      );
      available = page.items_available;
      items.push(...page.items);
      if (page.items.length === 0 || items.length >= available) break;
    }
    if (items.length < available) {
      throw new GatewayError(500, 'incomplete response while checking permission');
    }
    return items;
  }

  /** updateContainer changes attributes of a container record. */
  updateContainer(
    token: string,
    uuid: string,
    attrs: Record<string, unknown>,
    reqId: string,
  ): Promise<Container> {
    const body = JSON.stringify({ container: attrs });
    return this.#call('containers.update', 'PUT', `/arvados/v1/containers/${uuid}`, token, reqId,
      body);
  }

  /** close releases pooled connections. */
  close(): Promise<void> {
    return this.#dispatcher.close();
  }

  async #call<T>(
    call: string,
    method: 'GET' | 'PUT',
    path: string,
    token: string,
    reqId: string,
    body?: string,
  ): Promise<T> {
    const started = performance.now();
    const seconds = () => (performance.now() - started) / 1000;
    const headers: Record<string, string> = {
      authorization: `Bearer ${token}`,
      accept: 'application/json',
      'x-request-id': reqId,
    };
    if (body !== undefined) headers['content-type'] = 'application/json';
    let res;
    try {
      res = await request(new URL(path, this.#base), {
        method, headers, body, dispatcher: this.#dispatcher,
        signal: AbortSignal.timeout(this.#timeoutMs),
      });
    } catch (err) {
      this.#observe(call, 'unreachable', seconds());
      // The message names the failure, never the URL's credentials or the token.
      throw new GatewayError(502, `Arvados API request failed: ${describe(err)}`);
    }
    let text: string;
    try {
      text = await res.body.text();
    } catch (err) {
      this.#observe(call, 'unreachable', seconds());
      throw new GatewayError(502, `Arvados API response failed: ${describe(err)}`);
    }
    if (res.statusCode >= 300) {
      this.#observe(call, `${Math.floor(res.statusCode / 100)}xx`, seconds());
      throw new GatewayError(res.statusCode, apiErrorMessage(text, res.statusCode));
    }
    this.#observe(call, 'ok', seconds());
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new GatewayError(502, 'Arvados API returned malformed JSON');
    }
  }
}

/** apiErrorMessage takes the first message of an Arvados JSON error, or describes the status. */
export function apiErrorMessage(text: string, status: number): string {
  return errorsIn(text) ?? `Arvados API answered status ${status}`;
}

function describe(err: unknown): string {
  if (err instanceof Error) {
    if (err.name === 'TimeoutError' || err.name === 'AbortError') return 'timeout';
    const code = (err as { code?: string }).code;
    return code ?? err.message;
  }
  return 'unknown error';
}

function enc(value: unknown): string {
  return encodeURIComponent(JSON.stringify(value));
}
