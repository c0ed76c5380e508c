#!/usr/bin/env bash
# A backup of CompX that restores (deploy/restore.sh; README "Backups"): the database as a pg_dump and
# MEDIA_ROOT (export snapshots, training artefacts) as a tar, with their checksums, in DEST.
#
#   DATABASE_URL=postgres://… MEDIA_ROOT=/srv/compx/media deploy/backup.sh /backups/compx-$(date +%F)
#
# The database goes first: a snapshot written meanwhile is then at worst a file no row names yet, never a row
# whose files are missing (snapshots are never changed or deleted once written).
set -euo pipefail
: "${DATABASE_URL:?set DATABASE_URL (the database to back up)}"
: "${MEDIA_ROOT:?set MEDIA_ROOT (the folder of exports and training artefacts)}"
dest=${1:?usage: deploy/backup.sh DEST_DIR}
mkdir -p "$dest"
# Custom format: compressed, and pg_restore can restore it into any empty database.
pg_dump --format=custom --no-owner --no-privileges --file "$dest/compx.dump" "$DATABASE_URL"
tar -C "$MEDIA_ROOT" -cf "$dest/media.tar" .
(cd "$dest" && sha256sum compx.dump media.tar > SHA256SUMS)
echo "backup in $dest: $(du -sh "$dest" | cut -f1)"
