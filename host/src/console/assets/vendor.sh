#!/usr/bin/env bash
# Copies uPlot, at the version package-lock.json pins, next to this script,
# where the console embeds it into the binary. Run after changing
# package.json; the copied files are committed, so building wasq needs no
# network.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --loglevel=error
cp node_modules/uplot/dist/uPlot.iife.min.js node_modules/uplot/dist/uPlot.min.css node_modules/uplot/LICENSE .
mv LICENSE uPlot.LICENSE
rm -rf node_modules
