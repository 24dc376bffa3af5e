#!/bin/sh
# A Python base image made from Debian's own packages, for machines that cannot pull an official one
# (no registry). Needs root, debootstrap and a running docker. Usage: deploy/base-image.sh [NAME]
# (default ktrdr-base:bookworm); then build with --build-arg BASE_IMAGE=NAME. An image of that name
# already present is kept (FORCE=1 makes it again).
set -eu
name=${1:-ktrdr-base:bookworm}
suite=${SUITE:-bookworm}
if [ -z "${FORCE:-}" ] && docker image inspect "$name" >/dev/null 2>&1; then
  echo "$name: present, kept (FORCE=1 to make it again)"
  exit 0
fi
root=$(mktemp -d /var/tmp/ktrdr-base.XXXXXX)
trap 'rm -rf "$root"' EXIT INT TERM
# python3-venv brings ensurepip (the images' venv gets its pip from it); tini is PID 1 in the images.
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,tini \
  "$suite" "$root" ${MIRROR:-}
# What an image never reads: package caches and lists, documentation (licences kept), manuals, locales.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* \
  "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* "$root"/var/log/*
find "$root/usr/share/doc" -type f ! -name copyright -delete
tar -C "$root" -c . | docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["python3"]' \
  -m "debootstrap --variant=minbase $suite + python3, python3-venv, ca-certificates, tini" - "$name"
docker image ls "$name"
