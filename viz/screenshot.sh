#!/usr/bin/env bash
# Takes a screenshot of the desktop app while it trains, without a physical display: starts a
# virtual X server, runs the release binary on it for a while, grabs the screen.
#
#   viz/screenshot.sh [OUTPUT.png] [SECONDS]      (defaults: screenshot.png, 15)
#
# SCREENSHOT_TAB=Batch (or Curves, Attention, Alignment, Gap, Runs) opens that panel.
#
# Needs Xvfb, ImageMagick's `import` (or `xwd` + `convert`), Mesa's software OpenGL and the X11
# client libraries winit loads. It installs nothing; on Debian/Ubuntu:
#   apt-get install xvfb imagemagick libgl1-mesa-dri libegl1 libegl-mesa0 \
#                   libxkbcommon-x11-0 libxcursor1 libxrandr2 libxi6
set -euo pipefail

out="${1:-screenshot.png}"
seconds="${2:-15}"
display="${SCREENSHOT_DISPLAY:-:99}"
size="${SCREENSHOT_SIZE:-1400x900}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

missing=()
command -v Xvfb >/dev/null || missing+=("xvfb")
if ! command -v import >/dev/null; then
    command -v xwd >/dev/null && command -v convert >/dev/null || missing+=("imagemagick")
fi
for lib in libGL.so.1 libEGL.so.1 libxkbcommon-x11.so.0 libXcursor.so.1 libXrandr.so.2 libXi.so.6; do
    if ! ldconfig -p 2>/dev/null | grep -q "$lib"; then
        case "$lib" in
            libGL.so.1) missing+=("libgl1-mesa-dri") ;;
            libEGL.so.1) missing+=("libegl1 libegl-mesa0") ;;
            libxkbcommon-x11.so.0) missing+=("libxkbcommon-x11-0") ;;
            libXcursor.so.1) missing+=("libxcursor1") ;;
            libXrandr.so.2) missing+=("libxrandr2") ;;
            libXi.so.6) missing+=("libxi6") ;;
        esac
    fi
done
if ((${#missing[@]})); then
    echo "screenshot.sh: missing tools or libraries. On Debian/Ubuntu install them with:" >&2
    echo "  apt-get install ${missing[*]}" >&2
    exit 1
fi

echo "building the release binary…"
(cd "$root" && cargo build --release -p viz --bin workbench)
bin="${CARGO_TARGET_DIR:-$root/target}/release/workbench"

Xvfb "$display" -screen 0 "${size}x24" -nolisten tcp >/dev/null 2>&1 &
xvfb=$!
app=""
cleanup() {
    [[ -n "$app" ]] && kill "$app" 2>/dev/null || true
    kill "$xvfb" 2>/dev/null || true
}
trap cleanup EXIT
sleep 1

runtime="$(mktemp -d)"
# A fresh settings directory, so that the screenshot shows the default panel, or the one asked
# for (eframe keeps the app's settings as RON under "app" in <data dir>/<app id>/app.ron).
if [[ -n "${SCREENSHOT_TAB:-}" ]]; then
    case "$SCREENSHOT_TAB" in
        Curves | Batch | Attention | Alignment | Gap | Runs) ;;
        *) echo "screenshot.sh: SCREENSHOT_TAB must be Curves, Batch, Attention, Alignment, Gap or Runs" >&2; exit 1 ;;
    esac
    mkdir -p "$runtime/contrastiveworkbench"
    printf '{"app":"(tab:%s)"}\n' "$SCREENSHOT_TAB" > "$runtime/contrastiveworkbench/app.ron"
fi
DISPLAY="$display" XDG_RUNTIME_DIR="$runtime" XDG_DATA_HOME="$runtime" \
    WAYLAND_DISPLAY="" LIBGL_ALWAYS_SOFTWARE=1 "$bin" &
app=$!
echo "training for ${seconds} s…"
sleep "$seconds"
if ! kill -0 "$app" 2>/dev/null; then
    echo "screenshot.sh: the app exited early (see its output above)" >&2
    exit 1
fi
if command -v import >/dev/null; then
    DISPLAY="$display" import -window root "$out"
else
    DISPLAY="$display" xwd -root -silent | convert xwd:- "$out"
fi
echo "wrote $out"
