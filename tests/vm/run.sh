#!/usr/bin/env bash
# The camera path on a real kernel driver: boots Debian's packaged kernel under qemu (software
# emulation, TCG) with the vivid virtual video driver, runs the real `veriface run` against it
# and prints one PASS/FAIL line per check (tests/vm/guest.sh says what each one checks).
#
#   bash tests/vm/run.sh [x86_64|aarch64|all]     (default x86_64)
#
# Installs what it needs with apt (qemu-system-*, and downloads the kernel, busybox-static and
# v4l-utils packages into target/vm/ without installing them). Exit status 0 only when every
# check passed. Needs ../shared for the face clip of the loopback check.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
archs=${1:-x86_64}
[ "$archs" = all ] && archs="x86_64 aarch64"
export DEBIAN_FRONTEND=noninteractive

# Clips written through the driver's loopback: a real person and a deepfake (FaceForensics++),
# 4 s at 10 fps each.
ff=../shared/data/faceforensics
clips=(real="$ff/original_sequences/youtube/c23/videos/035.mp4"
    fake="$ff/manipulated_sequences/Deepfakes/c23/videos/033_097.mp4")
# The loopback's frame size (vivid's HDMI default); the clips are cropped to it.
width=640
height=480

need_cmd() { command -v "$1" >/dev/null 2>&1; }
install_host() {
    local pkgs=()
    need_cmd qemu-system-x86_64 || pkgs+=(qemu-system-x86)
    [[ " $archs " == *" aarch64 "* ]] && ! need_cmd qemu-system-aarch64 && pkgs+=(qemu-system-arm)
    need_cmd ffmpeg || pkgs+=(ffmpeg)
    need_cmd cpio || pkgs+=(cpio)
    if [ ${#pkgs[@]} -gt 0 ]; then
        apt-get update -qq
        apt-get install -y --no-install-recommends "${pkgs[@]}" >/dev/null
    fi
}

# Debian package for another architecture, downloaded (not installed) into $1.
download() {
    local dir=$1 arch=$2
    shift 2
    mkdir -p "$dir"
    (
        cd "$dir"
        for p in "$@"; do
            ls "${p%%:*}"_*.deb >/dev/null 2>&1 && continue
            if [ "$arch" = amd64 ]; then
                apt-get download "$p" >/dev/null 2>&1
            else
                # Another architecture's index: a private apt state, so the host's is untouched.
                apt_foreign "$arch" download "$p:$arch" >/dev/null 2>&1
            fi || { echo "vm: cannot download $p ($arch)" >&2; exit 1; }
        done
    )
}

apt_foreign() {
    # The host's sources (they name no architecture, so they serve the one configured here),
    # with a private state and cache: the host's own package index is left alone.
    local arch=$1
    shift
    local state=$repo/target/vm/apt-$arch
    local opts=(-o Dir::State="$state" -o Dir::Cache="$state/cache"
        -o APT::Architecture="$arch" -o APT::Architectures="$arch")
    if [ ! -d "$state/lists" ]; then
        mkdir -p "$state/lists/partial" "$state/cache/archives/partial"
        apt-get -q "${opts[@]}" update >/dev/null
    fi
    apt-get -q "${opts[@]}" "$@"
}

# Shared libraries a binary needs (NEEDED entries, recursively) from the given library folders.
copy_libs() {
    local bin=$1 dest=$2 readelf=$3
    shift 3
    local todo=("$bin") done_=" "
    while [ ${#todo[@]} -gt 0 ]; do
        local f=${todo[0]}
        todo=("${todo[@]:1}")
        for lib in $($readelf -d "$f" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
            [[ "$done_" == *" $lib "* ]] && continue
            done_+="$lib "
            local found=
            for d in "$@"; do
                if [ -e "$d/$lib" ]; then
                    found=$(readlink -f "$d/$lib")
                    break
                fi
            done
            [ -n "$found" ] || { echo "vm: $bin needs $lib, not found in $*" >&2; exit 1; }
            cp "$found" "$dest/$lib"
            todo+=("$found")
        done
    done
    # The program interpreter (dynamic loader) under the path the binary names.
    local interp
    interp=$($readelf -l "$bin" | sed -n 's/.*Requesting program interpreter: \(.*\)\]/\1/p')
    if [ -n "$interp" ]; then
        mkdir -p "$(dirname "$dest/../..$interp")"
        for d in "$@"; do
            if [ -e "$d/$(basename "$interp")" ]; then
                cp "$(readlink -f "$d/$(basename "$interp")")" "$dest/../..$interp"
                break
            fi
        done
    fi
}

# Lines of "VERDICT PROBABILITY" in time order: the last (settled) verdict and the median
# probability.
summarise() {
    local lines last median
    lines=$(cat)
    [ -n "$lines" ] || return 0
    last=$(tail -1 <<<"$lines" | sed 's/ [^ ]*$//')
    median=$(awk '{ print $NF }' <<<"$lines" | sort -g | awk '{ p[NR] = $1 } END { print p[int((NR + 1) / 2)] }')
    echo "$last $median"
}

run_arch() {
    local arch=$1 deb kernel_pkg qemu console target bin libdirs readelf
    local work=$repo/target/vm/$arch
    case $arch in
    x86_64)
        deb=amd64
        qemu=(qemu-system-x86_64 -M pc -cpu max)
        console=ttyS0
        target=
        bin=$repo/target/debug/veriface
        libdirs=(/lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu /lib64)
        readelf=readelf
        ;;
    aarch64)
        deb=arm64
        qemu=(qemu-system-aarch64 -M virt -cpu cortex-a72)
        console=ttyAMA0
        target=aarch64-unknown-linux-gnu
        bin=$repo/target/$target/debug/veriface
        libdirs=(/usr/aarch64-linux-gnu/lib)
        readelf=readelf
        ;;
    *)
        echo "vm: unknown architecture $arch (x86_64 or aarch64)" >&2
        exit 2
        ;;
    esac
    echo "== vm $arch: building"
    if [ -z "$target" ]; then
        cargo build --locked -q --bin veriface
    else
        rustup target add "$target" >/dev/null
        cargo --config cross/config.toml build --locked -q --bin veriface --target "$target"
    fi

    echo "== vm $arch: fetching the kernel, busybox and v4l-utils packages"
    local debs=$work/debs
    # The metapackage names the current kernel package.
    download "$debs" "$deb" "linux-image-$deb" busybox-static v4l-utils libv4l-0 libv4lconvert0
    kernel_pkg=$(dpkg-deb -f "$debs"/linux-image-"${deb}"_*.deb Depends | sed 's/ (.*//;s/,.*//')
    download "$debs" "$deb" "$kernel_pkg"
    # v4l2-ctl is C++: its libstdc++ comes along.
    download "$debs" "$deb" libstdc++6 libgcc-s1 libc6 libudev1 libjpeg62-turbo

    local unpacked=$work/unpacked
    if [ ! -f "$unpacked/.done-$kernel_pkg" ]; then
        rm -rf "$unpacked"
        mkdir -p "$unpacked"
        for d in "$debs"/*.deb; do dpkg-deb -x "$d" "$unpacked"; done
        touch "$unpacked/.done-$kernel_pkg"
    fi
    local kver=${kernel_pkg#linux-image-}
    local kernel=$unpacked/boot/vmlinuz-$kver
    if [ "$arch" = aarch64 ]; then
        # The arm64 package may ship a gzip'ed Image, which qemu's -kernel does not unpack.
        if gzip -t "$kernel" 2>/dev/null; then
            gzip -dc "$kernel" >"$work/Image"
            kernel=$work/Image
        fi
    fi

    echo "== vm $arch: initramfs"
    local root=$work/root
    rm -rf "$root"
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,lib,lib64,opt/models,modules}
    cp "$unpacked/bin/busybox" "$root/bin/busybox"
    local m
    for m in rc-core cec mc videodev videobuf2-common videobuf2-v4l2 videobuf2-memops \
        videobuf2-vmalloc videobuf2-dma-contig v4l2-dv-timings v4l2-tpg vivid; do
        local ko
        ko=$(find "$unpacked/lib/modules/$kver" -name "$m.ko*" | head -1)
        [ -n "$ko" ] || { echo "vm: module $m missing from $kernel_pkg" >&2; exit 1; }
        cp "$ko" "$root/modules/"
    done
    mkdir -p "$root/opt/lib"
    cp "$bin" "$root/opt/veriface"
    strip "$root/opt/veriface" 2>/dev/null || aarch64-linux-gnu-strip "$root/opt/veriface" 2>/dev/null || true
    local guest_libs=("$unpacked/lib/${arch}-linux-gnu" "$unpacked/usr/lib/${arch}-linux-gnu")
    copy_libs "$root/opt/veriface" "$root/opt/lib" $readelf "${guest_libs[@]}" "${libdirs[@]}"
    cp "$unpacked/usr/bin/v4l2-ctl" "$root/opt/v4l2-ctl"
    copy_libs "$root/opt/v4l2-ctl" "$root/opt/lib" $readelf "${guest_libs[@]}" "${libdirs[@]}"
    # The models the daemon's config names, and the manifest.
    cp models/manifest.toml "$root/opt/models/"
    for f in face_detection_short_range.onnx face_landmark.onnx deepfake_effnet_lite0.onnx \
        deepfake_gru_step.onnx deepfake_gru_sequence.onnx emotion_mini_xception.onnx; do
        cp "models/$f" "$root/opt/models/"
    done
    # The clips as raw YUYV for the output device, and the same frames as Y4M for `--source`.
    mkdir -p "$root/opt/clips"
    local c
    for c in "${clips[@]}"; do
        local label=${c%%=*}
        local file=${c#*=}
        [ -f "$file" ] || { echo "vm: $file not found (../shared beside the repo?)" >&2; exit 1; }
        ffmpeg -v error -y -i "$file" -t 4 -vf "scale=$width:$height:force_original_aspect_ratio=increase,crop=$width:$height,fps=10" \
            -pix_fmt yuyv422 -f rawvideo "$root/opt/clips/$label.yuyv"
        ffmpeg -v error -y -f rawvideo -pix_fmt yuyv422 -s "${width}x${height}" -r 10 \
            -i "$root/opt/clips/$label.yuyv" -pix_fmt yuv444p "$work/$label.y4m"
    done
    cp tests/vm/guest.sh "$root/checks.sh"
    cat >"$root/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
export PATH=/bin:/sbin:/usr/bin:/usr/sbin:/opt
export LD_LIBRARY_PATH=/opt/lib
export WIDTH=$width HEIGHT=$height VM_ONLY=${VM_ONLY:-}
sh /checks.sh
echo "== guest done"
poweroff -f
EOF
    chmod +x "$root/init"
    (cd "$root" && find . | cpio -o -H newc --quiet) >"$work/initramfs.cpio"

    echo "== vm $arch: booting $kver under ${qemu[0]} (TCG)"
    local log=$work/console.log
    local start=$SECONDS
    timeout 900 "${qemu[@]}" -accel tcg,thread=multi -m 2048 -smp 2 -nographic -nic none \
        -no-reboot -kernel "$kernel" -initrd "$work/initramfs.cpio" \
        -append "console=$console quiet panic=-1 rdinit=/init" </dev/null | tr -d '\r' |
        tee "$log" | grep --line-buffered -E '^(CHECK|INFO|== )' || true
    echo "== vm $arch: $((SECONDS - start)) s in the VM"

    # The same frames through `run --source` on the host: the daemon's final verdict per clip
    # must be the one it reached through the driver.
    for c in "${clips[@]}"; do
        [ "${VM_ONLY:-}" = diskfull ] && break
        local label=${c%%=*}
        local rec=$work/host-rec-$label
        rm -rf "$rec"
        printf '[records]\nface_interval_ms = 0\n[engine]\nthreads = 2\n' >"$work/host.toml"
        "$repo/target/debug/veriface" run --source "$work/$label.y4m" --config "$work/host.toml" \
            --models models/manifest.toml --records "$rec" --status "$work/host-status.json" \
            --quiet >/dev/null 2>"$work/host-$label.log" || true
        # Per side: the verdict of the last face record and the median frame probability (the
        # driver path analyses fewer frames under emulation, not other ones).
        local want got
        want=$("$repo/target/debug/veriface" log decode "$rec" 2>/dev/null |
            sed -n 's/.*"frame_prob":\([0-9.]*\).*"verdict":"\([A-Z ]*\)".*/\2 \1/p' | summarise)
        got=$(sed -n "s/^VERDICT $label //p" "$log" | summarise)
        echo "INFO $label: driver ${got:-none}; --source ${want:-none}" | tee -a "$log"
        local same=FAIL
        if [ -n "$want" ] && [ -n "$got" ] && [ "${want% *}" = "${got% *}" ] &&
            awk -v a="${want##* }" -v b="${got##* }" 'BEGIN { d = a - b; exit !(d < 0.1 && d > -0.1) }'; then
            same=PASS
        fi
        echo "CHECK same_verdict_as_source_$label $same last verdict and median frame probability (within 0.1)" | tee -a "$log"
    done
    local fails passes
    passes=$(grep -c '^CHECK .* PASS' "$log" || true)
    fails=$(grep -c '^CHECK .* FAIL' "$log" || true)
    if ! grep -q '^== guest done' "$log"; then
        echo "vm $arch: FAIL: the guest did not finish (see $log)"
        return 1
    fi
    echo "vm $arch: $passes passed, $fails failed"
    [ "$fails" -eq 0 ] && [ "$passes" -gt 0 ]
}

install_host
status=0
for a in $archs; do
    run_arch "$a" || status=1
done
exit $status
