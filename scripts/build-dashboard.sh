#!/usr/bin/env bash
# Builds the operator dashboard's front end (dashboard/) into dashboard/dist,
# which obleth serves under /ui/: installs its npm packages from the lock
# file when they are missing or older than it, and rebuilds when a source is
# newer than the last build.
set -euo pipefail
cd "$(dirname "$0")/../dashboard"

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "build-dashboard: installing the front end's npm packages"
  npm ci --no-audit --no-fund --loglevel=error
fi
built=dist/index.html
if [ ! -f "$built" ] || [ -n "$(find src index.html vite.config.js package-lock.json -newer "$built" -print -quit)" ]; then
  echo "build-dashboard: building dashboard/dist"
  npx vite build --logLevel warn
fi
