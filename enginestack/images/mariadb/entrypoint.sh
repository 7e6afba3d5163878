#!/bin/sh
# First start (empty data directory): create the system tables, then the root password, the
# database and the user from the MYSQL_* variables, with a server that listens on no port;
# then run the server as the mysql user. Later starts keep the data as it is.
set -eu
datadir=/var/lib/mysql
if [ "$(id -u)" = 0 ]; then
  chown -R mysql:mysql "$datadir" /run/mysqld
fi
if [ ! -d "$datadir/mysql" ]; then
  : "${MYSQL_ROOT_PASSWORD:?MYSQL_ROOT_PASSWORD is required on first start}"
  echo "entrypoint: initialising $datadir"
  mariadb-install-db --user=mysql --datadir="$datadir" --auth-root-authentication-method=normal \
    --skip-test-db >/dev/null
  mariadbd --user=mysql --datadir="$datadir" --skip-networking --socket=/run/mysqld/init.sock &
  pid=$!
  i=0
  until mariadb-admin --socket=/run/mysqld/init.sock ping >/dev/null 2>&1; do
    i=$((i + 1))
    [ "$i" -lt 300 ] || { echo "entrypoint: bootstrap server did not start" >&2; exit 1; }
    sleep 0.2
  done
  {
    echo "ALTER USER 'root'@'localhost' IDENTIFIED BY '${MYSQL_ROOT_PASSWORD}';"
    echo "CREATE USER 'root'@'%' IDENTIFIED BY '${MYSQL_ROOT_PASSWORD}';"
    echo "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;"
    if [ -n "${MYSQL_DATABASE:-}" ]; then
      echo "CREATE DATABASE IF NOT EXISTS \`${MYSQL_DATABASE}\`;"
    fi
    if [ -n "${MYSQL_USER:-}" ] && [ -n "${MYSQL_PASSWORD:-}" ]; then
      echo "CREATE USER '${MYSQL_USER}'@'%' IDENTIFIED BY '${MYSQL_PASSWORD}';"
      [ -z "${MYSQL_DATABASE:-}" ] || echo "GRANT ALL ON \`${MYSQL_DATABASE}\`.* TO '${MYSQL_USER}'@'%';"
    fi
    echo "FLUSH PRIVILEGES;"
  } | mariadb --socket=/run/mysqld/init.sock -uroot
  kill "$pid"
  wait "$pid" || true
  echo "entrypoint: initialised"
fi
if [ "$1" = mariadbd ]; then
  shift
  # Bound everywhere in the container (the official image does the same); only the private
  # network reaches it, nothing publishes its port.
  exec mariadbd --user=mysql --datadir="$datadir" --bind-address=0.0.0.0 --port=3306 \
    --skip-name-resolve --character-set-server=utf8mb4 "$@"
fi
exec "$@"
