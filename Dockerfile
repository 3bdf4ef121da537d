# The sidecar image. Node 24 runs the TypeScript sources directly, so there is no build step:
# one stage installs the production dependencies, the final stage holds them and src/ only.
# scripts/docker-build-check.sh checks these rules and emulates the build without Docker.

FROM node:24-bookworm-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund

FROM node:24-bookworm-slim
LABEL org.opencontainers.image.title="arvados-gateway-sidecar" \
      org.opencontainers.image.description="Container gateway sidecar for the Arvados controller" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV NODE_ENV=production
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json ./
COPY src ./src
# Files stay owned by root, so the process cannot change its own code; it writes nothing, and
# the pod mounts an emptyDir at /tmp under a read-only root filesystem.
USER 10001:10001
EXPOSE 8443 9090
# Exec form: node is PID 1 and receives SIGTERM itself, which starts the drain. The flag is
# V8 heap tuning that must be on the command line (src/node-flags.ts).
CMD ["node", "--initial-heap-size=128", "--min-semi-space-size=16", "src/main.ts"]
