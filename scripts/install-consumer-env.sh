#!/usr/bin/env bash
# A separate venv in which the real CLIP trainers' data loaders run (open_clip_train 3.3.0 with
# webdataset 0.2.86), so that tests/consumers.py can check that our exports load in them.
# It is kept apart from the project's environment: open_clip_train.data imports torchvision, and the
# torchvision wheels here are CUDA builds that do not load beside the project's CPU torch.
#
#   scripts/install-consumer-env.sh            # idempotent: does nothing once the venv works
#
# Environment:
#   REWRITE_CONSUMER_VENV     where the venv goes (default ~/.cache/rewrite/consumer-venv)
#   REWRITE_CONSUMER_PYTHON   interpreter to build it from (default: the `python` on PATH; 3.11 is the
#                             version whose torch/torchvision wheels lie on this machine's disk)
#   REWRITE_CONSUMER_TORCH, REWRITE_CONSUMER_TORCHVISION   override the torch/torchvision pins
#   REWRITE_CONSUMER_ALLOW_DOWNLOAD=1   allow torch, torchvision, triton or the big nvidia-* wheels to
#                             come from the network (several GB; without it the script stops first)
set -euo pipefail

venv="${REWRITE_CONSUMER_VENV:-$HOME/.cache/rewrite/consumer-venv}"
marker="$venv/.rewrite-consumer-env"

case "$(uname -m)" in
    # A CUDA build of torch (it runs on the CPU); pip on Python 3.11 takes both from this disk.
    x86_64) torch_default="2.14.1" tv_default="0.29.1" ;;
    # A CPU build on aarch64 (per .library/env/machines/python.md; not tried by this script).
    aarch64 | arm64) torch_default="2.9.1" tv_default="0.24.1" ;;
    *) torch_default="2.14.1" tv_default="0.29.1" ;;
esac
torch_pin="torch==${REWRITE_CONSUMER_TORCH:-$torch_default}"
tv_pin="torchvision==${REWRITE_CONSUMER_TORCHVISION:-$tv_default}"
# open_clip's [training] extra asks for webdataset<=0.2.86; pin it so the resolver cannot pick an older one.
pins=("$torch_pin" "$tv_pin" "open_clip_torch[training]==3.3.0" "webdataset==0.2.86" pandas Pillow)
spec="${pins[*]}"

# The venv is ready when its marker names these pins and it imports open_clip's data module with
# webdataset 0.2.86.
ready() {
    [ -x "$venv/bin/python" ] && [ -f "$marker" ] && [ "$(cat "$marker")" = "$spec" ] &&
        "$venv/bin/python" - >/dev/null 2>&1 <<'EOF'
import importlib.metadata as md
import open_clip_train.data  # noqa: F401  (imports torch, torchvision, webdataset, pandas)
assert md.version("webdataset") == "0.2.86", md.version("webdataset")
assert md.version("open_clip_torch") == "3.3.0", md.version("open_clip_torch")
EOF
}

if ready; then
    echo "consumer venv: $venv (already installed: $spec)"
    exit 0
fi

start=$SECONDS
python_exe="${REWRITE_CONSUMER_PYTHON:-$(python -c 'import sys; print(sys.executable)')}"
pyver="$("$python_exe" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[ "$pyver" = "3.11" ] || echo "note: $python_exe is Python $pyver; the torch wheels on this machine's disk are for 3.11" >&2

if [ ! -x "$venv/bin/python" ]; then
    mkdir -p "$(dirname "$venv")"
    "$python_exe" -m venv "$venv"
fi
rm -f "$marker"
pip=("$venv/bin/python" -m pip)

# Resolve first, without installing, and refuse to fetch the multi-GB wheels from the network: the
# machine's pip configuration (/etc/xdg/pip, extra file:// indexes) normally supplies them from disk.
report="$(mktemp)"
trap 'rm -f "$report"' EXIT
"${pip[@]}" install --quiet --dry-run --report "$report" "${pins[@]}" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
"$venv/bin/python" - "$report" <<'EOF'
import json, os, re, sys
report = json.load(open(sys.argv[1]))
heavy = re.compile(r"^(torch|torchvision|triton|nvidia-(cudnn|cublas|cufft|cusolver|cusparse|cusparselt|nccl|nvshmem|curand|cuda-nvrtc)\b.*)$")
remote = [(i["metadata"]["name"], i["metadata"]["version"]) for i in report.get("install", [])
          if not i["download_info"]["url"].startswith("file:")]
local = [i for i in report.get("install", []) if i["download_info"]["url"].startswith("file:")]
print(f"resolved {len(report.get('install', []))} packages: {len(local)} from local files, "
      f"{len(remote)} from the network ({', '.join(f'{n}=={v}' for n, v in remote) or 'none'})")
big = [f"{n}=={v}" for n, v in remote if heavy.match(n.lower().replace("_", "-"))]
if big and os.environ.get("REWRITE_CONSUMER_ALLOW_DOWNLOAD") != "1":
    sys.exit(f"these large wheels would be downloaded: {', '.join(big)}\n"
             "set REWRITE_CONSUMER_ALLOW_DOWNLOAD=1 to allow it (several GB), or point pip at local wheels")
EOF

"${pip[@]}" install --quiet "${pins[@]}" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)

echo "$spec" >"$marker"
if ! ready; then
    rm -f "$marker"
    echo "the consumer venv at $venv does not import open_clip_train.data with webdataset 0.2.86:" >&2
    "$venv/bin/python" -c "import open_clip_train.data" >&2 || true
    exit 1
fi
size="$(du -sh "$venv" | cut -f1)"
echo "consumer venv: $venv (installed $spec in $((SECONDS - start)) s, $size)"
