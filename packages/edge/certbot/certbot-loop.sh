#!/bin/sh
# The certbot container's command. Obtains the certificate through the edge's ACME webroot when there is none
# yet, then tries a renewal every CERTBOT_RENEW_INTERVAL seconds (certbot renews only certificates within 30
# days of expiry). Nothing else is needed: the edge polls the certificate files and reloads nginx gracefully
# when they change (until the first issuance it serves a self-signed bootstrap certificate).
#
#   CERTBOT_DOMAINS         comma-separated names; the first names the certificate (required), e.g.
#                           cloudtolocalllm.online,www.cloudtolocalllm.online,app.cloudtolocalllm.online,docs.cloudtolocalllm.online
#   CERTBOT_EMAIL           the ACME account's contact (optional)
#   CERTBOT_WEBROOT         served by the edge at /.well-known/acme-challenge/ ([acme] webroot; /var/www/certbot)
#   CERTBOT_CONFIG_DIR      certbot's configuration directory, shared with the edge read-only (/etc/letsencrypt)
#   CERTBOT_SERVER          ACME directory URL (default: Let's Encrypt production)
#   CERTBOT_RENEW_INTERVAL  seconds between renewal attempts (43200); 0: issue or renew once, then exit
#
# Extra arguments go to every certbot call (e.g. --staging, --work-dir, --force-renewal). An argument `renew`
# (`docker-compose -f docker-compose.multi.yml --profile ssl-setup run --rm certbot renew`, which comes after
# the image's own arguments) means one attempt now: issue or renew, exit with certbot's status.
set -eu

once=false
for arg in "$@"; do
  shift
  if [ "$arg" = renew ]; then
    once=true
  else
    set -- "$@" "$arg"
  fi
done

: "${CERTBOT_DOMAINS:?set CERTBOT_DOMAINS, e.g. example.com,app.example.com,docs.example.com}"
webroot=${CERTBOT_WEBROOT:-/var/www/certbot}
config_dir=${CERTBOT_CONFIG_DIR:-/etc/letsencrypt}
interval=${CERTBOT_RENEW_INTERVAL:-43200}
if [ "$once" = true ]; then
  interval=0
fi
name=${CERTBOT_DOMAINS%%,*}

set -- --non-interactive --config-dir "$config_dir" "$@"
if [ -n "${CERTBOT_SERVER:-}" ]; then
  set -- --server "$CERTBOT_SERVER" "$@"
fi
trap 'exit 0' TERM INT
mkdir -p "$webroot"

if [ ! -e "$config_dir/live/$name/fullchain.pem" ]; then
  if [ -n "${CERTBOT_EMAIL:-}" ]; then
    account="--email=$CERTBOT_EMAIL"
  else
    account="--register-unsafely-without-email"
  fi
  echo "certbot-loop: obtaining a certificate for $CERTBOT_DOMAINS" >&2
  certbot certonly "$@" --agree-tos "$account" --webroot -w "$webroot" \
    --cert-name "$name" --domains "$CERTBOT_DOMAINS" --keep-until-expiring
fi

while :; do
  if ! certbot renew "$@" --webroot -w "$webroot"; then
    [ "$once" = false ] || exit 1
    echo "certbot-loop: renewal failed; next attempt in ${interval}s" >&2
  fi
  [ "$interval" -gt 0 ] || exit 0
  sleep "$interval" &
  wait $!
done
