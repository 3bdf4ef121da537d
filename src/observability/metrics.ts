// Prometheus metrics. Label values come from small fixed sets (routes, outcomes, reasons):
// never a container UUID or a URL, which would make one series per container.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { busyPoll } from '../net/busy-poll.ts';

/** Metrics is the set of series the sidecar exports, on a registry of its own. */
export class Metrics {
  readonly registry = new Registry();

  readonly tunnelsHeld = new Gauge({
    name: 'arvados_gateway_tunnels', help: 'Tunnels from crunch-run currently held.',
    registers: [this.registry],
  });
  readonly tunnelConnects = new Counter({
    name: 'arvados_gateway_tunnel_connects_total', help: 'Tunnels accepted.',
    registers: [this.registry],
  });
  readonly tunnelDisconnects = new Counter({
    name: 'arvados_gateway_tunnel_disconnects_total', help: 'Tunnels closed, by reason.',
    labelNames: ['reason'] as const, registers: [this.registry],
  });
  readonly tunnelAuthFailures = new Counter({
    name: 'arvados_gateway_tunnel_auth_failures_total',
    help: 'Tunnel requests refused because auth_secret was wrong.', registers: [this.registry],
  });
  readonly streamsOpened = new Counter({
    name: 'arvados_gateway_tunnel_streams_opened_total', help: 'Streams opened on tunnels.',
    registers: [this.registry],
  });
  readonly streamsOpen = new Gauge({
    name: 'arvados_gateway_tunnel_streams_open', help: 'Streams open on held tunnels.',
    registers: [this.registry],
  });
  readonly windowBudgetTaken = new Gauge({
    name: 'arvados_gateway_tunnel_window_budget_taken_bytes',
    help: 'Tunnel stream window above 256 KiB granted now (GATEWAY_TUNNEL_WINDOW_BUDGET).',
    registers: [this.registry],
  });
  readonly tunnelBytes = new Counter({
    name: 'arvados_gateway_tunnel_bytes_total',
    help: 'Payload bytes through tunnels; direction is to_gateway or from_gateway.',
    labelNames: ['direction'] as const, registers: [this.registry],
  });
  readonly yamuxProtocolErrors = new Counter({
    name: 'arvados_gateway_yamux_protocol_errors_total',
    help: 'Tunnels closed because the peer broke the yamux protocol.', registers: [this.registry],
  });
  readonly requests = new Counter({
    name: 'arvados_gateway_requests_total', help: 'Requests by route and outcome.',
    labelNames: ['route', 'outcome'] as const, registers: [this.registry],
  });
  readonly requestDuration = new Histogram({
    name: 'arvados_gateway_request_duration_seconds',
    help: 'Time to answer a request (for upgrades: until the 101 or the error).',
    labelNames: ['route'] as const, registers: [this.registry],
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
  });
  readonly sessionBytes = new Counter({
    name: 'arvados_gateway_session_bytes_total',
    help: 'Bytes relayed by spliced SSH sessions; direction is from_client or to_client.',
    labelNames: ['direction'] as const, registers: [this.registry],
  });
  readonly sessionsActive = new Gauge({
    name: 'arvados_gateway_sessions_active', help: 'Spliced SSH sessions and log transfers.',
    registers: [this.registry],
  });
  readonly apiCallDuration = new Histogram({
    name: 'arvados_gateway_api_call_duration_seconds', help: 'Arvados API calls by outcome.',
    labelNames: ['call', 'outcome'] as const, registers: [this.registry],
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
  });
  readonly apiErrors = new Counter({
    name: 'arvados_gateway_api_errors_total', help: 'Arvados API calls that failed.',
    labelNames: ['call', 'outcome'] as const, registers: [this.registry],
  });
  readonly configReloads = new Counter({
    name: 'arvados_gateway_config_reloads_total', help: 'Cluster config updates by result.',
    labelNames: ['result'] as const, registers: [this.registry],
  });
  readonly configLastReloadOk = new Gauge({
    name: 'arvados_gateway_config_last_reload_successful',
    help: '1 if the newest cluster config update was accepted, 0 if it was refused.',
    registers: [this.registry],
  });
  readonly peerForwards = new Counter({
    name: 'arvados_gateway_peer_forwards_total', help: 'Requests forwarded to a peer sidecar.',
    labelNames: ['route', 'outcome'] as const, registers: [this.registry],
  });
  readonly refusedFull = new Counter({
    name: 'arvados_gateway_refused_full_total', help: 'Requests refused because a limit was hit.',
    labelNames: ['limit'] as const, registers: [this.registry],
  });
  readonly busyPollSeconds = new Counter({
    name: 'arvados_gateway_busy_poll_seconds_total',
    help: 'Time the event loop kept polling after reads instead of sleeping ' +
      '(GATEWAY_BUSY_POLL_US). At most this much CPU time went to it.',
    registers: [this.registry],
    collect() {
      this.reset();
      this.inc(busyPoll.spentSeconds);
    },
  });
  readonly ready = new Gauge({
    name: 'arvados_gateway_ready', help: '1 when the sidecar is ready for traffic.',
    registers: [this.registry],
  });

  /** closedTunnelBytes is the payload of tunnels that have closed, for tunnelBytes. */
  readonly closedTunnelBytes = { toGateway: 0, fromGateway: 0 };

  constructor(processMetrics = true) {
    if (processMetrics) collectDefaultMetrics({ register: this.registry });
  }

  /**
   * updateTunnelBytes sets the tunnel byte counters from closed tunnels plus the live ones.
   * The yamux sessions count their own payload, so the data path carries no metric calls.
   */
  updateTunnelBytes(live: { bytesIn: number; bytesOut: number }[]): void {
    let to = this.closedTunnelBytes.toGateway;
    let from = this.closedTunnelBytes.fromGateway;
    for (const s of live) {
      to += s.bytesOut;
      from += s.bytesIn;
    }
    this.tunnelBytes.reset();
    this.tunnelBytes.labels('to_gateway').inc(to);
    this.tunnelBytes.labels('from_gateway').inc(from);
  }

  /** observeApiCall records one Arvados API call. */
  observeApiCall(call: string, outcome: string, seconds: number): void {
    this.apiCallDuration.labels(call, outcome).observe(seconds);
    if (outcome !== 'ok') this.apiErrors.labels(call, outcome).inc();
  }
}
