#!/usr/bin/env bash
# The programs OCRmyPDF needs besides its Python package (tests/test_ocrmypdf_plugin.py, docs/ocrmypdf.md):
# Tesseract (OCRmyPDF checks for it even when another engine reads the pages) and Ghostscript (its PDF/A
# fallback and rasterizer). Installs the missing Debian packages when it can (root with apt-get), else says
# exactly what is missing; it never fails the build itself: the tests that need them fail, naming them.
set -u
missing=()
command -v tesseract >/dev/null 2>&1 || missing+=(tesseract-ocr)
command -v gs >/dev/null 2>&1 || missing+=(ghostscript)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "system_deps: installing ${missing[*]} (Debian) for OCRmyPDF" >&2
    if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
        exit 0
    fi
    echo "system_deps: apt-get could not install ${missing[*]}" >&2
fi
echo "system_deps: missing Debian packages: ${missing[*]} (OCRmyPDF needs them; as root: apt-get update && apt-get install ${missing[*]});" \
     "tests/test_ocrmypdf_plugin.py will fail until they are installed" >&2
exit 0
