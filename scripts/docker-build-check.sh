#!/usr/bin/env bash
# Checks the Dockerfile without a Docker engine. First its rules: every stage FROM node:24, a
# numeric non-root USER, an exec-form CMD without a shell, EXPOSE 8443 9090, NODE_ENV, and a
# .dockerignore keeping the work tree out. Then it emulates the build, instruction by
# instruction, in a temporary directory per stage (WORKDIR, COPY, COPY --from, ENV, and RUN
# for npm), and starts the final stage's CMD with Node 24 as the image's user on a read-only
# view of the files, with a writable /tmp stand-in: /healthz and /readyz must answer 200, and
# SIGTERM must end the process with status 0.
#
# Usage: scripts/docker-build-check.sh [--static]
#   --static     check the rules only (no npm, no run)
# Environment: DOCKERFILE (default ./Dockerfile), NODE_BIN (default node_modules/.bin/node).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DOCKERFILE=${DOCKERFILE:-$ROOT/Dockerfile}
NODE_BIN=${NODE_BIN:-$ROOT/node_modules/.bin/node}
STATIC=0
case "${1:-}" in
  --static) STATIC=1 ;;
  "") ;;
  *) echo "usage: $0 [--static]" >&2; exit 2 ;;
esac

say() { echo "docker-build-check: $*"; }
fail() {
  echo "docker-build-check: FAIL: $*" >&2
  exit 1
}

[ -f "$DOCKERFILE" ] || fail "no Dockerfile at $DOCKERFILE"
CONTEXT=$(cd "$(dirname "$DOCKERFILE")" && pwd)
[ -x "$NODE_BIN" ] || fail "no Node at $NODE_BIN (run npm ci)"

# --- Read the Dockerfile: continuation lines joined, comments and blank lines dropped. ------
INSTRUCTIONS=()
current=""
while IFS= read -r line || [ -n "$line" ]; do
  if [ -z "$current" ]; then
    trimmed="${line#"${line%%[![:space:]]*}"}"
    [[ -z "$trimmed" || "$trimmed" == \#* ]] && continue
  fi
  if [[ "$line" =~ ^(.*)\\[[:space:]]*$ ]]; then
    current+="${BASH_REMATCH[1]} "
    continue
  fi
  current+="$line"
  INSTRUCTIONS+=("$current")
  current=""
done < "$DOCKERFILE"
[ -z "$current" ] || fail "the Dockerfile ends inside a continued line"
[ "${#INSTRUCTIONS[@]}" -gt 0 ] || fail "the Dockerfile is empty"

# JSON array of strings -> one element per line; fails on anything else.
json_argv() {
  "$NODE_BIN" -e '
    const v = JSON.parse(process.argv[1]);
    const ok = Array.isArray(v) && v.length > 0 && v.every((x) => typeof x === "string");
    if (!ok) process.exit(1);
    process.stdout.write(v.join("\n"));' "$1" 2>/dev/null
}

# --- Static rules. --------------------------------------------------------------------------
stage_count=0
final_user=""
final_cmd=""
final_entrypoint=""
final_expose=" "
final_env=()
for ins in "${INSTRUCTIONS[@]}"; do
  word=$(echo "${ins%% *}" | tr '[:lower:]' '[:upper:]')
  rest="${ins#* }"
  [ "$rest" = "$ins" ] && rest=""
  case "$word" in
    FROM)
      image=$(echo "$rest" | awk '{for (i = 1; i <= NF; i++) if ($i !~ /^--/) { print $i; exit }}')
      node24='^(docker\.io/(library/)?)?node:24([.-][^[:space:]]*)?(@sha256:[0-9a-f]{64})?$'
      [[ "$image" =~ $node24 ]] ||
        fail "FROM $image: every stage must be FROM node:24..."
      stage_count=$((stage_count + 1))
      final_user=""; final_cmd=""; final_entrypoint=""; final_expose=" "; final_env=()
      ;;
    USER) final_user="$rest" ;;
    CMD) final_cmd="$rest" ;;
    ENTRYPOINT) final_entrypoint="$rest" ;;
    EXPOSE) final_expose+="$rest " ;;
    ENV) final_env+=("$rest") ;;
  esac
done
[ "$stage_count" -ge 1 ] || fail "no FROM"

[ -n "$final_user" ] || fail "the final stage has no USER: it would run as root"
[[ "$final_user" =~ ^([0-9]+)(:([0-9]+))?$ ]] ||
  fail "USER $final_user: use a numeric uid[:gid], so runAsNonRoot can verify it"
RUN_UID=${BASH_REMATCH[1]}
RUN_GID=${BASH_REMATCH[3]:-$RUN_UID}
[ "$RUN_UID" -ne 0 ] || fail "USER $final_user is root"

[ -n "$final_cmd" ] || fail "the final stage has no CMD"
[[ "$final_cmd" == \[* ]] ||
  fail "CMD $final_cmd: use the exec form [\"node\", ...] so node gets SIGTERM"
cmd_argv=$(json_argv "$final_cmd") || fail "CMD $final_cmd is not a JSON array of strings"
entry_argv=""
if [ -n "$final_entrypoint" ]; then
  entry_argv=$(json_argv "$final_entrypoint") ||
    fail "ENTRYPOINT $final_entrypoint: use the exec form"
fi
argv_lines=$cmd_argv
[ -z "$entry_argv" ] || argv_lines="$entry_argv"$'\n'"$cmd_argv"
mapfile -t ARGV <<< "$argv_lines"
case "$(basename "${ARGV[0]}")" in
  sh | bash | dash | ash | env | tini | dumb-init)
    fail "the command starts with ${ARGV[0]}: no wrapper, node must be PID 1" ;;
  node) ;;
  *) fail "the command runs ${ARGV[0]}, not node" ;;
esac

for port in 8443 9090; do
  [[ "$final_expose" =~ [[:space:]]$port(/tcp)?[[:space:]] ]] || fail "EXPOSE lacks $port"
done
printf '%s\n' "${final_env[@]}" |
  grep -Eq '(^|[[:space:]])NODE_ENV=("production"|production)([[:space:]]|$)' ||
  fail "the final stage does not set ENV NODE_ENV=production"

IGNORE="$CONTEXT/.dockerignore"
[ -f "$IGNORE" ] || fail "no .dockerignore beside the Dockerfile"
for entry in node_modules .cache .git test interop bench; do
  grep -Eqx "/?$entry/?" "$IGNORE" || fail ".dockerignore does not exclude $entry"
done
say "ok: $stage_count stage(s) FROM node:24, USER $RUN_UID:$RUN_GID, CMD ${ARGV[*]}," \
  "EXPOSE 8443 9090, NODE_ENV=production, .dockerignore"
[ "$STATIC" -eq 0 ] || { say "PASS (static)"; exit 0; }

# --- Emulated build. ------------------------------------------------------------------------
node_major=$("$NODE_BIN" -p 'process.versions.node.split(".")[0]')
[ "$node_major" = 24 ] || fail "$NODE_BIN is Node $node_major, the image has Node 24"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/docker-build-check.XXXXXX")
chmod 755 "$WORK"
# Node goes beside the stages, as the base image has it outside the app, and so the image's
# user can run it whatever the permissions of the directories above this checkout.
NODE_DIR="$WORK/node/bin"
mkdir -p "$NODE_DIR"
chmod -R 755 "$WORK/node"
ln "$(readlink -f "$NODE_BIN")" "$NODE_DIR/node" 2>/dev/null || {
  cp "$(readlink -f "$NODE_BIN")" "$NODE_DIR/node"
  chmod 755 "$NODE_DIR/node"
}
PID=""
cleanup() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then kill -KILL "$PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# Is path (relative to the context) excluded by a .dockerignore line (plain names only)?
ignored() {
  local path=${1#./} pattern
  while IFS= read -r pattern || [ -n "$pattern" ]; do
    pattern=${pattern#/}; pattern=${pattern%/}
    [[ -z "$pattern" || "$pattern" == \#* ]] && continue
    if [[ "$path" == "$pattern" || "$path" == "$pattern"/* ]]; then return 0; fi
  done < "$IGNORE"
  return 1
}

declare -A STAGE_ROOT=()
stage=-1
root=""
cwd="/"
STAGE_ENV=()
for ins in "${INSTRUCTIONS[@]}"; do
  word=$(echo "${ins%% *}" | tr '[:lower:]' '[:upper:]')
  rest="${ins#* }"
  [ "$rest" = "$ins" ] && rest=""
  case "$word" in
    FROM)
      stage=$((stage + 1))
      root="$WORK/stage$stage"
      mkdir -p "$root"
      STAGE_ROOT[$stage]=$root
      if [[ "$rest" =~ [[:space:]][Aa][Ss][[:space:]]+([^[:space:]]+) ]]; then
        STAGE_ROOT[${BASH_REMATCH[1]}]=$root
      fi
      cwd="/"
      STAGE_ENV=()
      ;;
    WORKDIR)
      [[ "$rest" == /* ]] && cwd="$rest" || cwd="${cwd%/}/$rest"
      mkdir -p "$root$cwd"
      ;;
    ENV)
      if [[ "$rest" == *=* ]]; then
        read -r -a pairs <<< "$rest"
        for p in "${pairs[@]}"; do
          v=${p#*=}; v=${v#\"}; v=${v%\"}
          STAGE_ENV+=("${p%%=*}=$v")
        done
      else
        STAGE_ENV+=("${rest%% *}=${rest#* }")
      fi
      ;;
    COPY)
      read -r -a parts <<< "$rest"
      from=""
      args=()
      for p in "${parts[@]}"; do
        case "$p" in
          --from=*) from=${p#--from=} ;;
          --chown=* | --chmod=* | --link) ;;
          --*) fail "COPY option $p is not emulated" ;;
          *) args+=("$p") ;;
        esac
      done
      [ "${#args[@]}" -ge 2 ] || fail "COPY $rest: needs a source and a destination"
      dest=${args[-1]}
      unset 'args[-1]'
      [[ "$dest" == /* ]] && target="$root$dest" || target="$root${cwd%/}/$dest"
      for src in "${args[@]}"; do
        if [ -n "$from" ]; then
          [ -n "${STAGE_ROOT[$from]:-}" ] || fail "COPY --from=$from: no such stage"
          source_path="${STAGE_ROOT[$from]}$src"
        else
          ignored "$src" && fail "COPY $src: .dockerignore excludes it from the context"
          source_path="$CONTEXT/$src"
        fi
        [ -e "$source_path" ] || fail "COPY $src: not found"
        if [ -d "$source_path" ]; then
          mkdir -p "$target"
          cp -a "$source_path/." "$target/"
        elif [[ "$dest" == */ || "${#args[@]}" -gt 1 ]]; then
          mkdir -p "$target"
          cp -a "$source_path" "$target/"
        else
          mkdir -p "$(dirname "$target")"
          cp -a "$source_path" "$target"
        fi
      done
      ;;
    RUN)
      [[ "$rest" =~ ^npm[[:space:]] ]] || fail "RUN $rest: only npm commands are emulated"
      say "RUN $rest (stage $stage, in $cwd)"
      if ! (cd "$root$cwd" && env "${STAGE_ENV[@]}" PATH="$NODE_DIR:$PATH" bash -c "$rest") \
        > "$WORK/run.log" 2>&1; then
        tail -n 30 "$WORK/run.log" >&2
        fail "RUN $rest failed"
      fi
      ;;
    USER | CMD | ENTRYPOINT | EXPOSE | LABEL) ;;
    *) fail "instruction $word is not emulated" ;;
  esac
done
APP="$root$cwd"
FINAL_ENV=("${STAGE_ENV[@]}")

entries=$(cd "$APP" && ls -A | sort | tr '\n' ' ')
[ "$entries" = "node_modules package.json src " ] ||
  fail "the image's $cwd holds \"$entries\", expected node_modules package.json src"
[ ! -e "$APP/node_modules/typescript" ] ||
  fail "node_modules holds devDependencies (typescript): was --omit=dev dropped?"
say "ok: emulated build: $cwd holds $entries($(du -sh "$APP" | cut -f1))"

# --- Run the final stage. -------------------------------------------------------------------
mkdir -p "$WORK/tmp" "$WORK/etc"
chmod 1777 "$WORK/tmp"
cat > "$WORK/etc/config.yml" <<'YAML'
Clusters:
  zzzzz:
    SystemRootToken: docker-build-check-root-token
    Services:
      Controller:
        InternalURLs:
          "http://127.0.0.1:8003/": {}
YAML
chmod 644 "$WORK/etc/config.yml"

read -r FRONT ADMIN CONTROLLER < <("$NODE_BIN" -e '
  const net = require("node:net");
  const servers = [0, 1, 2].map(() => net.createServer());
  Promise.all(servers.map((s) => new Promise((r) => s.listen(0, "127.0.0.1", r)))).then(() => {
    console.log(servers.map((s) => s.address().port).join(" "));
    servers.forEach((s) => s.close());
  });')

RUN_ENV=(PATH="$NODE_DIR:/usr/local/bin:/usr/bin:/bin" HOME=/ TMPDIR="$WORK/tmp"
  "${FINAL_ENV[@]}"
  ARVADOS_CONFIG="$WORK/etc/config.yml"
  GATEWAY_LISTEN="127.0.0.1:$FRONT" GATEWAY_ADMIN_LISTEN="127.0.0.1:$ADMIN"
  GATEWAY_CONTROLLER_URL="http://127.0.0.1:$CONTROLLER" GATEWAY_DRAIN_GRACE_SECONDS=5
  LOG_LEVEL=info)
quoted_env=$(printf '%q ' "${RUN_ENV[@]}")
quoted_argv=$(printf '%q ' "${ARGV[@]}")

as_user=""
how="as uid $(id -u)"
if [ "$(id -u)" -eq 0 ] && setpriv --reuid="$RUN_UID" --regid="$RUN_GID" --clear-groups true \
  2>/dev/null; then
  as_user="setpriv --reuid=$RUN_UID --regid=$RUN_GID --clear-groups --no-new-privs"
  how="as uid $RUN_UID:$RUN_GID (setpriv)"
else
  say "NOTE: cannot switch to uid $RUN_UID (not root, or no setpriv): running $how"
fi

# A private mount namespace where / and the app are read-only and only the /tmp stand-in is
# writable, as in the pod. Without the privilege for it the run goes on read-write.
readonly_root=0
if [ "$(id -u)" -eq 0 ] && unshare --mount --propagation private true 2>/dev/null; then
  readonly_root=1
  how+=", read-only root"
else
  say "NOTE: cannot make a private mount namespace: running on a writable file system"
fi

touch "$WORK/started"
inner="cd $(printf '%q' "$APP") && exec env -i $quoted_env $as_user $quoted_argv"
if [ "$readonly_root" -eq 1 ]; then
  q_tmp=$(printf '%q' "$WORK/tmp")
  q_app=$(printf '%q' "$APP")
  unshare --mount --propagation private bash -c "
    set -e
    mount -t tmpfs -o size=16m,mode=1777 tmpfs $q_tmp
    mount --bind $q_app $q_app
    mount -o remount,bind,ro $q_app
    mount -o remount,bind,ro /
    $inner" > "$WORK/out.log" 2>&1 &
else
  bash -c "$inner" > "$WORK/out.log" 2>&1 &
fi
PID=$!
say "started ${ARGV[*]} $how, front 127.0.0.1:$FRONT, admin 127.0.0.1:$ADMIN (pid $PID)"

# The process is this shell's child: until waited for it lingers as a zombie, which kill -0
# would still find, so read its state instead.
alive() {
  [ -r "/proc/$PID/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$PID/status" 2>/dev/null
}

show_log() { echo "--- process output ---" >&2; tail -n 40 "$WORK/out.log" >&2; }

status_of() {
  curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" 2>/dev/null || true
}

wait_for_200() {
  local path=$1 code=""
  for _ in $(seq 1 100); do
    alive || { show_log; fail "the process exited before $path answered"; }
    code=$(status_of "http://127.0.0.1:$ADMIN$path")
    [ "$code" = 200 ] && return 0
    sleep 0.1
  done
  show_log
  fail "GET $path answered ${code:-nothing}, not 200"
}

wait_for_200 /healthz
say "ok: GET /healthz 200"
if [ -n "$as_user" ]; then
  uid=$(awk '/^Uid:/ {print $2}' "/proc/$PID/status")
  [ "$uid" = "$RUN_UID" ] || fail "the process runs as uid $uid, not $RUN_UID"
fi
if [ "$readonly_root" -eq 1 ]; then
  awk '$5 == "/" {print $6}' "/proc/$PID/mountinfo" | grep -Eq '(^|,)ro(,|$)' ||
    fail "the process sees a writable root file system"
fi
say "ok: the process runs $how"
wait_for_200 /readyz
say "ok: GET /readyz 200 (config loaded)"
code=$(status_of "http://127.0.0.1:$FRONT/arvados/v1/config")
[[ "$code" =~ ^[1-5][0-9][0-9]$ ]] || { show_log; fail "the front door did not answer HTTP"; }
say "ok: the front door answers HTTP ($code with no controller behind it)"

kill -TERM "$PID"
exited=""
for _ in $(seq 1 100); do
  if ! alive; then exited=1; break; fi
  sleep 0.1
done
[ -n "$exited" ] || { show_log; fail "still running 10 s after SIGTERM"; }
set +e
wait "$PID"
rc=$?
set -e
PID=""
[ "$rc" -eq 0 ] || { show_log; fail "exit status $rc after SIGTERM, expected 0"; }
say "ok: SIGTERM: exit status 0"

written=$(find "$APP" -newer "$WORK/started" -print | head -n 5)
[ -z "$written" ] || fail "the process wrote into the image: $written"
say "PASS"
