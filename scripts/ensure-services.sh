#!/usr/bin/env bash
# Makes sure the database servers the tests use answer on 127.0.0.1, starting the local ones when
# they are installed but stopped. Prints one line per service; never fails by itself: the tests
# report an unreachable server (and fail under CI=true).
set -u
probe_tcp() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" >/dev/null 2>&1; }
up() { # name, port, start command
  if probe_tcp "$2"; then echo "$1: up"; return; fi
  if ! eval "$3" >/dev/null 2>&1; then echo "$1: not installed or cannot start"; return; fi
  for _ in $(seq 1 30); do probe_tcp "$2" && { echo "$1: started"; return; }; sleep 1; done
  echo "$1: NOT available"
}
up postgresql 5432 'pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start'
up mariadb 3306 'start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd'
up redis 6379 "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no"
exit 0
