/*
 * Escape attempts for tests/it/escape.rs: one static binary, one subcommand per attack, run
 * inside an ovlrun session (bound read-only at /attack).
 *
 *   attack SUBCOMMAND [ARGS...]
 *
 * Prints one line "SUBCOMMAND=RESULT", RESULT being OK or the errno's name (EPERM, ...), and
 * exits 0 either way; 2 on a usage error. Every attack uses harmless arguments: if the kernel
 * let one through, nothing on the host would change (a module image of NULL, a kexec unload
 * with no image loaded, a keyring id lookup, a one-entry BPF array map and a software perf
 * counter that die with the process, a ptrace attach that detaches at once).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/keyctl.h>
#include <linux/perf_event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

static const char *cmd = "attack";

/* Prints "CMD=OK" when rc >= 0, else "CMD=ERRNO" for the errno saved by the caller. */
static int report(long rc, int err)
{
    if (rc >= 0) {
        printf("%s=OK\n", cmd);
    } else {
        const char *name = strerrorname_np(err);
        if (name)
            printf("%s=%s\n", cmd, name);
        else
            printf("%s=errno%d\n", cmd, err);
    }
    return 0;
}

static int usage(void)
{
    fprintf(stderr,
            "usage: attack init_module | kexec_load | open_by_handle_at [PATH] | keyctl | bpf\n"
            "     | perf_event_open | ptrace PID | tiocsti TEXT | write PATH VALUE\n"
            "     | mknod PATH MAJOR MINOR | read PATH N | mkdir PATH\n");
    return 2;
}

static int do_open_by_handle_at(const char *path)
{
    struct {
        struct file_handle fh;
        unsigned char bytes[MAX_HANDLE_SZ];
    } h;
    memset(&h, 0, sizeof h);
    h.fh.handle_bytes = MAX_HANDLE_SZ;
    int mount_id;
    /* A real handle where the filesystem gives one; else a made-up one (the filter must
     * refuse the call before the kernel looks at it). */
    if (syscall(SYS_name_to_handle_at, AT_FDCWD, path, &h.fh, &mount_id, 0) < 0) {
        h.fh.handle_bytes = 8;
        h.fh.handle_type = 1;
    }
    int mfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (mfd < 0)
        mfd = AT_FDCWD;
    long rc = syscall(SYS_open_by_handle_at, mfd, &h.fh, O_RDONLY | O_CLOEXEC);
    return report(rc, errno);
}

static int do_bpf(void)
{
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.map_type = BPF_MAP_TYPE_ARRAY;
    attr.key_size = 4;
    attr.value_size = 4;
    attr.max_entries = 1;
    long rc = syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof attr);
    return report(rc, errno);
}

static int do_perf_event_open(void)
{
    struct perf_event_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.size = sizeof attr;
    attr.type = PERF_TYPE_SOFTWARE;
    attr.config = PERF_COUNT_SW_TASK_CLOCK;
    attr.disabled = 1;
    attr.exclude_kernel = 1;
    attr.exclude_hv = 1;
    long rc = syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0);
    return report(rc, errno);
}

static int do_ptrace(pid_t pid)
{
    long rc = ptrace(PTRACE_ATTACH, pid, NULL, NULL);
    int err = errno;
    if (rc == 0) {
        waitpid(pid, NULL, __WALL);
        ptrace(PTRACE_DETACH, pid, NULL, NULL);
    }
    return report(rc, err);
}

static int do_tiocsti(const char *text)
{
    for (const char *p = text; *p; p++) {
        if (ioctl(0, TIOCSTI, p) < 0)
            return report(-1, errno);
    }
    return report(0, 0);
}

static int do_write(const char *path, const char *value)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return report(-1, errno);
    ssize_t n = write(fd, value, strlen(value));
    int err = errno;
    close(fd);
    return report(n, err);
}

static int do_read(const char *path, long want)
{
    char buf[4096];
    if (want > (long)sizeof buf)
        want = sizeof buf;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return report(-1, errno);
    ssize_t n = read(fd, buf, (size_t)want);
    int err = errno;
    close(fd);
    report(n, err);
    if (n >= 0)
        printf("%s_bytes=%zd\n", cmd, n);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage();
    cmd = argv[1];
    /* Unbuffered: a killed session still shows what ran. */
    setvbuf(stdout, NULL, _IONBF, 0);
    if (!strcmp(cmd, "init_module") && argc == 2) {
        long rc = syscall(SYS_init_module, NULL, 0UL, "");
        return report(rc, errno);
    }
    if (!strcmp(cmd, "kexec_load") && argc == 2) {
        long rc = syscall(SYS_kexec_load, 0UL, 0UL, NULL, 0UL);
        return report(rc, errno);
    }
    if (!strcmp(cmd, "open_by_handle_at") && argc <= 3)
        return do_open_by_handle_at(argc == 3 ? argv[2] : "/tmp");
    if (!strcmp(cmd, "keyctl") && argc == 2) {
        long rc = syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0);
        return report(rc, errno);
    }
    if (!strcmp(cmd, "bpf") && argc == 2)
        return do_bpf();
    if (!strcmp(cmd, "perf_event_open") && argc == 2)
        return do_perf_event_open();
    if (!strcmp(cmd, "ptrace") && argc == 3)
        return do_ptrace((pid_t)atoi(argv[2]));
    if (!strcmp(cmd, "tiocsti") && argc == 3)
        return do_tiocsti(argv[2]);
    if (!strcmp(cmd, "write") && argc == 4)
        return do_write(argv[2], argv[3]);
    if (!strcmp(cmd, "mknod") && argc == 5) {
        dev_t dev = makedev(strtoul(argv[3], NULL, 10), strtoul(argv[4], NULL, 10));
        long rc = mknod(argv[2], S_IFBLK | 0600, dev);
        return report(rc, errno);
    }
    if (!strcmp(cmd, "mkdir") && argc == 3) {
        long rc = mkdir(argv[2], 0755);
        return report(rc, errno);
    }
    if (!strcmp(cmd, "read") && argc == 4)
        return do_read(argv[2], atol(argv[3]));
    return usage();
}
