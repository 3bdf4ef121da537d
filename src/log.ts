// The process-wide logger. It is created once here and handed down; request handling uses
// child loggers that already carry req_id, route and container_uuid.
import { pino, type Logger } from 'pino';

export type { Logger };

/** REDACT_PATHS lists every place a secret can sit in a logged object. */
export const REDACT_PATHS = [
  'token',
  'auth_secret',
  'authorization',
  'password',
  'SystemRootToken',
  '*.token',
  '*.auth_secret',
  '*.authorization',
  '*.Authorization',
  '*.password',
  '*.SystemRootToken',
  'headers.authorization',
  'headers["x-arvados-authorization"]',
  'req.headers.authorization',
  'req.headers.cookie',
];

/** createLogger builds the root logger: JSON, one line per event, secrets redacted. */
export function createLogger(level = process.env.LOG_LEVEL ?? 'info',
    destination?: pino.DestinationStream): Logger {
  const options: pino.LoggerOptions = {
    level,
    base: { service: 'arvados-gateway-sidecar' },
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
  };
  return destination ? pino(options, destination) : pino(options);
}
