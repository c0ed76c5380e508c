#!/usr/bin/env bash
# Restores a deploy/backup.sh backup into an empty database and MEDIA_ROOT (README "Backups").
#
#   DATABASE_URL=postgres://…/compx_new MEDIA_ROOT=/srv/compx/media deploy/restore.sh /backups/compx-2026-12-04
#
# MEDIA_ROOT must be the path the backed-up site used (exports record where their files are). Stop the web
# servers and workers first; start them afterwards (migrations: `manage.py migrate` if the code is newer).
set -euo pipefail
: "${DATABASE_URL:?set DATABASE_URL (an empty database to restore into)}"
: "${MEDIA_ROOT:?set MEDIA_ROOT (where the exports and training artefacts go)}"
src=${1:?usage: deploy/restore.sh BACKUP_DIR}
(cd "$src" && sha256sum --check --quiet SHA256SUMS) || { echo "the backup in $src is damaged" >&2; exit 1; }
tables=$(psql "$DATABASE_URL" -Atc "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
if [ "$tables" != 0 ]; then
  echo "the database in DATABASE_URL has $tables tables: restore only into an empty database" >&2
  exit 1
fi
pg_restore --no-owner --no-privileges --exit-on-error --dbname "$DATABASE_URL" "$src/compx.dump"
mkdir -p "$MEDIA_ROOT"
tar -C "$MEDIA_ROOT" -xf "$src/media.tar"
echo "restored $src into the database and $MEDIA_ROOT"
