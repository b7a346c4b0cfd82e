/*
 * Counts guest instructions executed under qemu-user (TCG plugin API v1, QEMU 7.2+), so int8 and
 * f32 model runs can be compared for an ARM core without the board:
 *   qemu-aarch64 -cpu cortex-a72 -plugin ./insn_count.so veriface bench --model KEY ...
 * Prints "insns N" to stderr at exit. Instructions are not cycles: see benches/arm/README.md.
 * Per node: `veriface bench --model KEY --profile --mark-nodes` brackets each tract node with a
 * marker system call (NODE_MARKER below, answered ENOSYS); the instructions between a node's
 * start and end markers are added to that node and printed as "node ID N" lines at exit.
 * The few API declarations needed are written out here because Debian ships no qemu-plugin.h.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
struct qemu_info_t;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };

typedef void (*tb_trans_cb)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*udata_cb)(qemu_plugin_id_t id, void *userdata);
typedef void (*syscall_cb)(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num, uint64_t a1,
                           uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6,
                           uint64_t a7, uint64_t a8);

extern void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, tb_trans_cb cb);
extern void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb,
                                                     enum qemu_plugin_op op, void *ptr,
                                                     uint64_t imm);
extern size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
extern void qemu_plugin_register_vcpu_syscall_cb(qemu_plugin_id_t id, syscall_cb cb);
extern void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, udata_cb cb, void *userdata);
extern void qemu_plugin_outs(const char *string);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

/* One counter for all threads: inline adds race a little, which is noise next to billions. */
static uint64_t executed;

/* Must match NODE_MARKER_SYSCALL in src/infer/tract.rs. */
#define NODE_MARKER 0x7e57
#define MAX_NODES 8192
static uint64_t node_started[MAX_NODES];
static uint64_t node_insns[MAX_NODES];
static uint64_t node_calls[MAX_NODES];

/* The inline counter is bumped when a block starts and a system call ends its block, so at a
 * marker it holds exactly the instructions executed so far. */
static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num, uint64_t mark,
                       uint64_t node, uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6,
                       uint64_t a7, uint64_t a8)
{
    (void)id, (void)vcpu_index, (void)a3, (void)a4, (void)a5, (void)a6, (void)a7, (void)a8;
    if (num != NODE_MARKER || node >= MAX_NODES)
        return;
    if (mark == 0) {
        node_started[node] = executed;
    } else {
        node_insns[node] += executed - node_started[node];
        node_calls[node] += 1;
    }
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &executed,
                                             qemu_plugin_tb_n_insns(tb));
}

static void on_exit(qemu_plugin_id_t id, void *userdata)
{
    (void)id;
    (void)userdata;
    char line[64];
    snprintf(line, sizeof line, "insns %llu\n", (unsigned long long)executed);
    qemu_plugin_outs(line);
    for (size_t node = 0; node < MAX_NODES; node++) {
        if (node_calls[node] == 0)
            continue;
        snprintf(line, sizeof line, "node %zu %llu %llu\n", node,
                 (unsigned long long)node_insns[node], (unsigned long long)node_calls[node]);
        qemu_plugin_outs(line);
    }
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id,
                                                               const struct qemu_info_t *info,
                                                               int argc, char **argv)
{
    (void)info;
    (void)argc;
    (void)argv;
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_atexit_cb(id, on_exit, NULL);
    return 0;
}
