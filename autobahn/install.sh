#!/bin/sh
# Installs the Autobahn|Testsuite (`wstest`, which runs on Python 2.7 only) into a
# private, cached prefix and prints the path of a `wstest` launcher.
#
# Debian 12 ships no Python 2.7, so the interpreter is taken from Debian 11's
# archive on the mirror this machine already uses, unpacked with `dpkg -x`
# (the system's dpkg database is not touched), and autobahntestsuite is
# installed into the prefix with that interpreter's pip.
#
# Usage: autobahn/install.sh [PREFIX]   (default: $HOME/.cache/rfc6455-wstest)
# Idempotent: a working install in PREFIX is reused.
set -eu
P=${1:-${WSTEST_PREFIX:-$HOME/.cache/rfc6455-wstest}}
if [ -x "$P/bin/wstest" ] && "$P/bin/wstest" -a >/dev/null 2>&1; then
  echo "$P/bin/wstest"
  exit 0
fi
command -v apt-get >/dev/null || { echo "install.sh: needs apt-get (Debian)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "install.sh: needs python3 (for pip download)" >&2; exit 1; }
rm -rf "$P"
mkdir -p "$P/apt/lists/partial" "$P/debs" "$P/root" "$P/bin"

# The mirror the system already uses (deb822 sources first, then the classic list).
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian
echo "deb $mirror bullseye main" >"$P/apt/sources.list"
APT="-o Dir::Etc::SourceList=$P/apt/sources.list -o Dir::Etc::SourceParts=/dev/null \
     -o Dir::State::Lists=$P/apt/lists -o Debug::NoLocking=1 -o APT::Get::AllowUnauthenticated=false"
# shellcheck disable=SC2086
apt-get $APT update -qq >&2
# shellcheck disable=SC2086
(cd "$P/debs" && apt-get $APT download -qq python2.7 python2.7-minimal python2.7-dev \
  libpython2.7 libpython2.7-minimal libpython2.7-stdlib libpython2.7-dev libssl1.1 libffi7 >&2)
for deb in "$P"/debs/*.deb; do dpkg -x "$deb" "$P/root"; done

# The last pip, setuptools and wheel that support Python 2.7.
python3 -m pip download -q --no-deps -d "$P/debs" pip==20.3.4 setuptools==44.1.1 wheel==0.37.1 >&2
LIB="$P/root/usr/lib/x86_64-linux-gnu"
PY="$P/root/usr/bin/python2.7"
export LD_LIBRARY_PATH="$LIB" PYTHONHOME="$P/root/usr"
"$PY" "$P"/debs/pip-20.3.4-py2.py3-none-any.whl/pip install -q --no-index --prefix "$P/env" "$P"/debs/*.whl >&2
export PYTHONPATH="$P/env/lib/python2.7/site-packages"
CFLAGS="-I$P/root/usr/include/python2.7 -I$P/root/usr/include" LDFLAGS="-L$LIB" \
  "$PY" -m pip install -q --disable-pip-version-check --prefix "$P/env" autobahntestsuite==25.10.1 >&2

cat >"$P/bin/wstest" <<LAUNCHER
#!/bin/sh
export LD_LIBRARY_PATH="$LIB" PYTHONHOME="$P/root/usr"
unset PYTHONPATH
exec "$PY" -c "import site, sys; site.addsitedir('$P/env/lib/python2.7/site-packages'); sys.argv[0] = 'wstest'; from autobahntestsuite.wstest import run; run()" "\$@"
LAUNCHER
chmod +x "$P/bin/wstest"
"$P/bin/wstest" -a >/dev/null
echo "$P/bin/wstest"
