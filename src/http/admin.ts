// The admin listener: health, readiness, metrics and the debug views an operator reads through
// `kubectl port-forward`. It is a separate port so it is never exposed through the Service.
import { createServer, type Server } from 'node:http';
import { errorBody } from '../errors.ts';

/** AdminViews supplies what the admin endpoints show. */
export interface AdminViews {
  ready: () => { ready: boolean; reason: string };
  metrics: () => Promise<{ contentType: string; body: string }>;
  tunnels: () => object[];
  config: () => object;
}

const PAGES = ['/healthz', '/readyz', '/metrics', '/debug/tunnels', '/debug/config'];

/** startAdmin listens on host:port and serves the admin endpoints. */
export function startAdmin(host: string, port: number, views: AdminViews): Promise<Server> {
  const server = createServer(async (req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const json = (status: number, value: unknown) => {
      const body = JSON.stringify(value, null, 2) + '\n';
      res.writeHead(status, { 'Content-Type': 'application/json' });
      res.end(body);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { 'Content-Type': 'application/json', Allow: 'GET, HEAD' });
      res.end(errorBody('method not allowed'));
      return;
    }
    try {
      switch (path) {
        case '/healthz':
          return json(200, { health: 'OK' });
        case '/readyz': {
          const state = views.ready();
          return json(state.ready ? 200 : 503, state);
        }
        case '/metrics': {
          const { contentType, body } = await views.metrics();
          res.writeHead(200, { 'Content-Type': contentType });
          res.end(body);
          return;
        }
        case '/debug/tunnels':
          return json(200, views.tunnels());
        case '/debug/config':
          return json(200, views.config());
        default:
          res.writeHead(404, { 'Content-Type': 'application/json' });
          res.end(errorBody(`not found; the admin pages are ${PAGES.join(', ')}`));
      }
    } catch {
      res.writeHead(500, { 'Content-Type': 'application/json' });
      res.end(errorBody('internal error'));
    }
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve(server));
  });
}

