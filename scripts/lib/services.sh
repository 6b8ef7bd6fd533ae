# Shared by scripts/*: make sure the services the tests talk to are installed and running.
# Sourced, not executed. Works on a fresh Debian machine as root (apt-get) and on one that already
# runs them (then it changes nothing).

log() { printf '[aisle] %s\n' "$*" >&2; }

: "${AISLE_TEST_POSTGRES_URL:=postgres://postgres:postgres@127.0.0.1:5432/postgres}"
export AISLE_TEST_POSTGRES_URL

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    apt_updated=1
  fi
  log "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 60); do port_open "$1" && return 0; sleep 0.5; done
  return 1
}

ensure_postgres() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    apt_install postgresql postgresql-client
  fi
  if ! port_open 5432; then
    local ver
    ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1)
    if [ -z "$ver" ]; then
      log "no PostgreSQL cluster found; creating one"
      ver=$(ls /usr/lib/postgresql | sort -V | tail -n1)
      pg_createcluster "$ver" main >/dev/null
    fi
    log "starting PostgreSQL $ver"
    pg_ctlcluster --skip-systemctl-redirect "$ver" main start || pg_ctlcluster "$ver" main start
    wait_port 5432 || { log "PostgreSQL did not start"; return 1; }
  fi
  # The tests log in as postgres/postgres over TCP. A stock cluster wants a password on TCP and
  # has none set: set it once (a trust-auth cluster ignores it).
  if ! psql "$AISLE_TEST_POSTGRES_URL" -qtAc 'select 1' >/dev/null 2>&1; then
    log "setting the postgres role's password for the tests"
    su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
    psql "$AISLE_TEST_POSTGRES_URL" -qtAc 'select 1' >/dev/null ||
      { log "cannot log in to PostgreSQL at $AISLE_TEST_POSTGRES_URL"; return 1; }
  fi
}

ensure_mosquitto() {
  if ! command -v mosquitto >/dev/null 2>&1; then
    apt_install mosquitto mosquitto-clients
  fi
  if ! port_open 1883; then
    log "starting Mosquitto"
    if [ -f /etc/mosquitto/mosquitto.conf ]; then
      mosquitto -d -c /etc/mosquitto/mosquitto.conf
    else
      mosquitto -d -p 1883
    fi
    wait_port 1883 || { log "Mosquitto did not start"; return 1; }
  fi
}

# Headless Chromium and its WebDriver, for edge-agent/tests/pickup_page.rs (the staff page in a
# real browser). Debian's packages; that test fails, not skips, without them.
ensure_chromium() {
  if [ ! -x /usr/bin/chromedriver ] || [ ! -x /usr/bin/chromium ]; then
    apt_install chromium chromium-driver
  fi
}
