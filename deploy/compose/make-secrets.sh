#!/usr/bin/env bash
# Makes the secrets deploy/compose/docker-compose.yml reads, with random values, into a directory
# outside git (default deploy/compose/secrets/, or $1; the compose file reads $CCS_SECRETS_DIR):
#   ccs.env              the processes' settings: secret key, metrics token, database, Redis and
#                        broker accounts (CCS_ENVIRONMENT=production refuses placeholders)
#   postgres_password    the database superuser's password (POSTGRES_PASSWORD_FILE)
#   redis.acl            Redis accounts: the default user off, one user for the system
#   broker_tls_cert/key  the phones' listener: a self-signed certificate for trying it out; put
#                        the real certificate and key here before phones connect
# Existing files are kept: run it again to fill in only what is missing.
set -euo pipefail
dir=${1:-$(dirname "$0")/secrets}
host=${CCS_BROKER_HOSTNAME:-mqtt.example.invalid}
public=${CCS_PUBLIC_BASE_URL:-https://ccs.example.invalid}
mkdir -p "$dir"
chmod 0700 "$dir"  # only its owner on the host reaches the files
rand() { head -c 96 /dev/urandom | base64 | tr -d '/+=\n' | head -c "${1:-40}"; }
# Files 0644 under the 0700 directory: each is bind-mounted into the containers that name it,
# whose own users (postgres and redis 999, ours 10001) must read it; ccs.env is read by compose
# on the host only.
umask 022

if [[ ! -f $dir/postgres_password ]]; then rand > "$dir/postgres_password"; fi
if [[ ! -f $dir/redis_password ]]; then rand > "$dir/redis_password"; fi
if [[ ! -f $dir/redis.acl ]]; then
    printf 'user default off\nuser ccs on >%s ~* &* +@all\n' "$(cat "$dir/redis_password")" > "$dir/redis.acl"
fi
if [[ ! -f $dir/ccs.env ]]; then
    touch "$dir/ccs.env" && chmod 0600 "$dir/ccs.env"
    cat > "$dir/ccs.env" <<ENV
CCS_ENVIRONMENT=production
CCS_SECRET_KEY=$(rand 64)
CCS_METRICS_TOKEN=$(rand 40)
CCS_PUBLIC_BASE_URL=$public
CCS_DATABASE_URL=postgresql+psycopg://ccs:$(cat "$dir/postgres_password")@postgis:5432/ccs
CCS_REDIS_URL=redis://ccs:$(cat "$dir/redis_password")@redis:6379/0
CCS_MQTT_USERNAME=ccs-ingest
CCS_MQTT_PASSWORD=$(rand 40)
CCS_MQTT_COMMANDS_USERNAME=ccs-commands
CCS_MQTT_COMMANDS_PASSWORD=$(rand 40)
ENV
fi
if [[ ! -f $dir/broker_tls_cert ]]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=$host" \
        -addext "subjectAltName=DNS:$host" \
        -keyout "$dir/broker_tls_key" -out "$dir/broker_tls_cert" 2>/dev/null
    chmod 0644 "$dir/broker_tls_key"  # read by the broker's UID 10001 inside its container
fi
echo "secrets in $dir (keep them out of version control and backups you do not trust)"
