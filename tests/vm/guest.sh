# The checks inside the VM (busybox sh; run by tests/vm/run.sh as part of the initramfs).
# Each prints `CHECK <name> PASS|FAIL <detail>`; `INFO` lines carry measurements.
# shellcheck shell=sh

pass() { echo "CHECK $1 PASS ${2:-}"; }
fail() { echo "CHECK $1 FAIL ${2:-}"; }
check() { # name, condition (a command), detail
    name=$1
    shift
    detail=$1
    shift
    if "$@"; then pass "$name" "$detail"; else fail "$name" "$detail"; fi
}
uptime_ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }
# Waits up to $2 seconds for a fixed string to appear $3 times (default 1) in file $1.
wait_for() {
    deadline=$(($(uptime_ms) + $2 * 1000))
    while [ "$(grep -c -F "$4" "$1" 2>/dev/null)" -lt "${3:-1}" ]; do
        [ "$(uptime_ms)" -gt "$deadline" ] && return 1
        # A daemon that exited will not write it.
        [ -n "${daemon:-}" ] && ! kill -0 "$daemon" 2>/dev/null && return 1
        usleep 50000
    done
    return 0
}
status_field() { # a top-level string or number of the status file
    sed -n "s/.*\"$1\": *\"\{0,1\}\([^\",}]*\).*/\1/p" /tmp/status.json 2>/dev/null | head -1
}

load_vivid() {
    for m in rc-core cec mc videodev videobuf2-common videobuf2-v4l2 videobuf2-memops \
        videobuf2-vmalloc videobuf2-dma-contig v4l2-dv-timings v4l2-tpg; do
        insmod "/modules/$m.ko" 2>/dev/null
    done
    insmod /modules/vivid.ko "$@"
}

echo "INFO kernel $(uname -r) $(uname -m)"
# The daemon's config: camera node, size, record folder, face record interval (ms).
write_config() {
    cat >"$1" <<EOF
device_id = "vm"
[camera]
device = "$2"
width = $3
height = $4
fps = 25.0
format = "auto"
timeout_s = 2.0
reopen_max_s = 1.0
allow_virtual = true
[engine]
models = "/opt/models/manifest.toml"
threads = 2
[status]
path = "/tmp/status.json"
interval_s = 0.5
[records]
dir = "$5"
face_interval_ms = $6
EOF
}

# VM_ONLY=loopback runs sections 6 and 7 only, VM_ONLY=diskfull section 7 only.
if [ -z "${VM_ONLY:-}" ]; then

# ---- 1. the driver: a webcam-type capture node
load_vivid n_devs=1 node_types=0x1 num_inputs=1 input_types=0x0
check driver_loads "vivid capture node" test -c /dev/video0

# The camera-injection check on the real driver: vivid is a virtual camera, refused unless the
# config allows it (on a kiosk it never does).
write_config /tmp/veriface.toml /dev/video0 640 360 /tmp/records 1000
sed 's/^allow_virtual = true/allow_virtual = false/' /tmp/veriface.toml >/tmp/kiosk.toml
RUST_LOG=info veriface run --config /tmp/kiosk.toml --quiet >/dev/null 2>/tmp/kiosk.log &
daemon=$!
if wait_for /tmp/kiosk.log 120 1 "refused"; then
    pass virtual_camera_refused "$(grep -F refused /tmp/kiosk.log | head -1 | sed 's/.*\] //')"
else
    fail virtual_camera_refused "$(tail -2 /tmp/kiosk.log)"
fi
kill -TERM $daemon
wait $daemon
daemon=

RUST_LOG=info veriface run --config /tmp/veriface.toml --quiet >/tmp/run.out 2>/tmp/run.log &
daemon=$!

# ---- 2. format negotiation and streaming
if wait_for /tmp/run.log 120 1 "camera: /dev/video0"; then
    line=$(grep -F "camera: /dev/video0" /tmp/run.log | head -1 | sed 's/.*camera: //')
    check negotiates_yuyv_640x360_25fps "$line" sh -c "echo '$line' | grep -q 'YUYV 640x360 @ 25 fps'"
else
    fail negotiates_yuyv_640x360_25fps "no camera line in 120 s: $(tail -3 /tmp/run.log)"
fi
check analyses_frames "first frame analysed" wait_for /tmp/run.log 300 1 "ready: first frame analysed"
sleep 6
state=$(status_field camera)
fps=$(status_field fps)
frames=$(status_field frames)
echo "INFO status camera=$state analysed_fps=$fps analysed_frames=$frames"
check streaming "status camera=$state" test "$state" = streaming

# ---- 3. unplug and replug (all descriptors closed: the node comes back under its name)
echo vivid.0 >/sys/bus/platform/drivers/vivid/unbind
check unplug_seen "camera lost within 5 s" wait_for /tmp/run.log 5 1 "camera lost"
sleep 1
t0=$(uptime_ms)
echo vivid.0 >/sys/bus/platform/drivers/vivid/bind
if wait_for /tmp/run.log 30 2 "camera: /dev/video"; then
    ms=$(($(uptime_ms) - t0))
    echo "INFO recovery_ms $ms (same node)"
    check replug_recovers_within_5s "${ms} ms after bind" test "$ms" -le 5000
else
    fail replug_recovers_within_5s "not back within 30 s: $(tail -2 /tmp/run.log)"
fi

# ---- 4. replug while a stale descriptor is held: the camera comes back as another node
exec 3</dev/video0
echo vivid.0 >/sys/bus/platform/drivers/vivid/unbind
wait_for /tmp/run.log 5 2 "camera lost"
sleep 1
t0=$(uptime_ms)
echo vivid.0 >/sys/bus/platform/drivers/vivid/bind
new_node=$(ls /sys/class/video4linux | head -1)
echo "INFO after replug with a stale descriptor open: $new_node"
if wait_for /tmp/run.log 30 3 "camera: /dev/video"; then
    ms=$(($(uptime_ms) - t0))
    echo "INFO recovery_ms $ms (as /dev/$new_node)"
    check replug_under_another_node "back as /dev/$new_node in ${ms} ms" test "$ms" -le 5000
else
    fail replug_under_another_node "not back within 30 s (camera now /dev/$new_node): $(tail -2 /tmp/run.log)"
fi
exec 3<&-

# ---- 5. SIGTERM while the daemon is reconnecting (camera unplugged): a clean, prompt stop
echo vivid.0 >/sys/bus/platform/drivers/vivid/unbind
wait_for /tmp/run.log 5 3 "camera lost"
t0=$(uptime_ms)
kill -TERM $daemon
wait $daemon
rc=$?
ms=$(($(uptime_ms) - t0))
daemon=
echo vivid.0 >/sys/bus/platform/drivers/vivid/bind
check clean_stop_while_reconnecting "exit status $rc, ${ms} ms after SIGTERM" test $rc -eq 0 -a $ms -le 2000
grep -E "ERROR|WARN|error" /tmp/run.log | head -20 | sed 's/^/INFO log: /'

fi

# ---- 6. faces through the driver: frames of a real clip written to vivid's output device come
# back on its capture device (loop_video) into the daemon; the verdicts are printed for the host
# to compare with `run --source` on the same frames.
rmmod vivid 2>/dev/null
load_vivid n_devs=1 node_types=0x101 num_inputs=1 input_types=0x3 num_outputs=1 output_types=0x1
capture=
output=
for n in /sys/class/video4linux/video*; do
    case $(cat "$n/name") in
    *vid-cap) capture=/dev/${n##*/} ;;
    *vid-out) output=/dev/${n##*/} ;;
    esac
done
echo "INFO loopback: capture $capture, output $output"
# Both ends at the first DV timing (640x480p59.94), the loop on, no changing text overlay.
v4l2-ctl -d "$output" --set-dv-bt-timings index=0
v4l2-ctl -d "$capture" --set-dv-bt-timings index=0
v4l2-ctl -d "$capture" -c loop_video=1,osd_text_mode=2 || echo "INFO v4l2-ctl controls failed"
v4l2-ctl -d "$capture" --all 2>/dev/null | grep -E "Width/Height|Pixel Format" | sed 's/^/INFO capture /'
v4l2-ctl -d "$output" --all 2>/dev/null | grep -E "Width/Height|Pixel Format" | sed 's/^/INFO output /'
for clip in /opt/clips/*.yuyv; do
    [ "${VM_ONLY:-}" = diskfull ] && break
    label=$(basename "$clip" .yuyv)
    v4l2-ctl -d "$output" --set-fmt-video-out=width=$WIDTH,height=$HEIGHT,pixelformat=YUYV
    v4l2-ctl -d "$output" --stream-out-mmap --stream-from="$clip" --stream-loop 2>/dev/null &
    writer=$!
    write_config /tmp/loop.toml "$capture" "$WIDTH" "$HEIGHT" "/tmp/rec-$label" 0
    RUST_LOG=info veriface run --config /tmp/loop.toml --quiet >/dev/null 2>/tmp/loop-$label.log &
    daemon=$!
    if wait_for /tmp/loop-$label.log 120 1 "ready: first frame analysed"; then
        sleep "${LOOP_SECONDS:-40}"
    else
        tail -5 /tmp/loop-$label.log | sed 's/^/INFO log: /'
    fi
    kill -TERM $daemon
    wait $daemon
    daemon=
    kill $writer
    wait $writer 2>/dev/null
    veriface log decode "/tmp/rec-$label" 2>/dev/null >/tmp/dec-$label.json
    faces=$(grep -c '"event":"face"' /tmp/dec-$label.json)
    echo "INFO loopback $label: $faces face records; $(grep -F camera: /tmp/loop-$label.log | head -1)"
    # One line per face record for the host: the label and the frame probability.
    sed -n 's/.*"frame_prob":\([0-9.]*\).*"verdict":"\([A-Z ]*\)".*/VERDICT '"$label"' \2 \1/p' \
        /tmp/dec-$label.json
    check "faces_through_driver_$label" "$faces face records" test "$faces" -ge 3
    grep -E "ERROR|WARN" /tmp/loop-$label.log | head -5 | sed 's/^/INFO log: /'
done

# ---- 7. the records disk fills up and frees again: a real ENOSPC from a 512 KiB tmpfs, the
# size guard off (min_free_mib = 0) so the writes themselves fail. The daemon must stay up, say
# it once, resume when space returns, and every record on that disk must decode intact.
clip=$(ls /opt/clips/*.yuyv | head -1)
mkdir -p /tmp/small
mount -t tmpfs -o size=512k small /tmp/small
v4l2-ctl -d "$output" --set-fmt-video-out=width=$WIDTH,height=$HEIGHT,pixelformat=YUYV
v4l2-ctl -d "$output" --stream-out-mmap --stream-from="$clip" --stream-loop 2>/dev/null &
writer=$!
write_config /tmp/full.toml "$capture" "$WIDTH" "$HEIGHT" /tmp/small/rec 0
# write_config ends inside [records]; flush each record so the disk fills at once.
printf 'min_free_mib = 0\nflush_ms = 0\n' >>/tmp/full.toml
RUST_LOG=info veriface run --config /tmp/full.toml --quiet >/dev/null 2>/tmp/full.log &
daemon=$!
if wait_for /tmp/full.log 120 1 "ready: first frame analysed"; then
    sleep 3
    # Fill what is left: dd stops at ENOSPC.
    dd if=/dev/zero of=/tmp/small/filler bs=4096 2>/dev/null
    echo "INFO disk full: $(df -k /tmp/small | tail -1)"
    # The open record file's last page still has room for dozens of records (minutes under
    # emulation): a reload with changed [records] starts a new file, which needs a new page.
    sed -i 's/^face_interval_ms = 0/face_interval_ms = 1/' /tmp/full.toml
    kill -HUP $daemon
    t0=$(uptime_ms)
    wait_for /tmp/full.log 120 1 "No space left on device"
    echo "INFO ENOSPC $(($(uptime_ms) - t0)) ms after the reload"
    sleep 5
    check disk_full_daemon_stays_up "running 5 s after the first ENOSPC" kill -0 $daemon
    n_full=$(veriface log decode /tmp/small/rec 2>/dev/null | grep -c '"event":"face"')
    rm /tmp/small/filler
    wait_for /tmp/full.log 20 1 "working again"
    sleep 5
    n_freed=$(veriface log decode /tmp/small/rec 2>/dev/null | grep -c '"event":"face"')
    echo "INFO face records: $n_full while full, $n_freed after freeing"
    check disk_full_records_resume "$n_full face records while full, $n_freed 5 s after freeing" \
        test "$n_freed" -gt "$n_full"
else
    fail disk_full_daemon_stays_up "not started: $(tail -2 /tmp/full.log)"
fi
kill -TERM $daemon
wait $daemon
rc=$?
daemon=
kill $writer
wait $writer 2>/dev/null
grep -E "WARN|ERROR|reload" /tmp/full.log | head -12 | sed 's/^/INFO log: /'
said=$(grep -c "No space left on device" /tmp/full.log)
back=$(grep -c "working again" /tmp/full.log)
check disk_full_said_once "$said ENOSPC lines, $back 'working again' lines, exit $rc" \
    test "$said" -eq 1 -a "$back" -ge 1 -a "$rc" -eq 0
veriface log decode /tmp/small/rec >/tmp/full.json 2>/tmp/full.err
rc=$?
damaged=$(grep -c damaged /tmp/full.err)
last=$(tail -1 /tmp/full.json | sed -n 's/.*"event":"\([a-z_]*\)".*/\1/p')
sed 's/^/INFO decode: /' /tmp/full.err | head -3
check disk_full_records_intact "log decode exit $rc, $damaged damaged spans, last record: $last" \
    test "$rc" -eq 0 -a "$damaged" -eq 0 -a "$last" = stop
umount /tmp/small
