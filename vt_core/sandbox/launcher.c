/* vt_core sandbox launcher: one fork/exec chain that isolates one untrusted program.
 *
 * Run by the Python parent (as root, with an empty environment) as
 *   vt-sandbox-launcher [options] -- PROGRAM ARGS...
 * options (all required ones are always passed by vt_core.sandbox):
 *   --uid N --gid N           non-root ids the program runs as
 *   --as BYTES --cpu SECONDS --fsize BYTES --nofile N --nproc N   rlimits (hard = soft)
 *   --tmp-bytes BYTES --tmp-inodes N   size of the private /tmp (a tmpfs; the program runs in /tmp/work,
 *                             root's and sticky like /tmp)
 *   --wall SECONDS            backup wall-clock limit (the parent enforces its own, shorter one)
 *   --allow PATH              make PATH visible, read-only (repeatable); nothing else of the host is
 *                             (the root is a fresh tmpfs holding these binds, /proc, a private /dev and /tmp)
 *   --file NAME:FD            copy the content of FD into /tmp/work/NAME before the program starts
 *   --result-fd FD            give the program FD as its fd 3 (a pipe the parent reads results from)
 *
 * Chain: launcher --unshare(pid, mount, net, ipc, uts)--> fork init (pid 1 of the new pid namespace,
 * dies with the launcher through PR_SET_PDEATHSIG) --> fork program: setgroups/setresgid, rlimits,
 * no_new_privs, setresuid, chdir, execve with an empty environment. When the program exits, init exits
 * and the kernel kills everything left in the namespace (orphans included). SIGUSR1 asks the launcher
 * to stop the run: it kills init and returns only when the namespace is empty. The program's wait status
 * travels back through a pipe, and the launcher mirrors it (same exit code, or the same signal).
 * Setup failures print "vt-sandbox-launcher: ..." on stderr and exit 125.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_LIST 32
#define SETUP_FAILED 125

#ifndef MOUNT_ATTR_RDONLY
#define MOUNT_ATTR_RDONLY 0x00000001
#define MOUNT_ATTR_NOSUID 0x00000002
#define MOUNT_ATTR_NODEV 0x00000004
struct mount_attr { uint64_t attr_set, attr_clr, propagation, userns_fd; };
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif

static struct {
    uid_t uid;
    gid_t gid;
    rlim_t as, cpu, fsize, nofile, nproc;
    unsigned long tmp_bytes, tmp_inodes;
    unsigned wall;
    const char *allow[MAX_LIST];
    int n_allow;
    char file_name[MAX_LIST][256];
    int file_fd[MAX_LIST];
    int n_file;
    int result_fd;
    char **argv;
} cfg;

static const char *DEVICES[] = {"null", "zero", "full", "random", "urandom"};
#define N_DEVICES (sizeof(DEVICES) / sizeof(DEVICES[0]))
/* Where the new root is assembled: a mount point every system has; the host's /tmp is only covered
 * inside this mount namespace. */
#define NEW_ROOT "/tmp"
static pid_t init_pid;

static void die(const char *what) {
    fprintf(stderr, "vt-sandbox-launcher: %s: %s\n", what, strerror(errno));
    _exit(SETUP_FAILED);
}

static void usage(const char *what) {
    fprintf(stderr, "vt-sandbox-launcher: bad arguments: %s\n", what);
    _exit(SETUP_FAILED);
}

static unsigned long long number(const char *s) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || end == s) usage(s);
    return v;
}

static void parse(int argc, char **argv) {
    int i = 1;
    cfg.result_fd = -1;
    for (; i < argc; i++) {
        const char *o = argv[i];
        if (!strcmp(o, "--")) break;
        if (i + 1 >= argc) usage(o);
        const char *v = argv[++i];
        if (!strcmp(o, "--uid")) cfg.uid = (uid_t)number(v);
        else if (!strcmp(o, "--gid")) cfg.gid = (gid_t)number(v);
        else if (!strcmp(o, "--as")) cfg.as = number(v);
        else if (!strcmp(o, "--cpu")) cfg.cpu = number(v);
        else if (!strcmp(o, "--fsize")) cfg.fsize = number(v);
        else if (!strcmp(o, "--nofile")) cfg.nofile = number(v);
        else if (!strcmp(o, "--nproc")) cfg.nproc = number(v);
        else if (!strcmp(o, "--tmp-bytes")) cfg.tmp_bytes = number(v);
        else if (!strcmp(o, "--tmp-inodes")) cfg.tmp_inodes = number(v);
        else if (!strcmp(o, "--wall")) cfg.wall = (unsigned)number(v);
        else if (!strcmp(o, "--result-fd")) cfg.result_fd = (int)number(v);
        else if (!strcmp(o, "--allow")) {
            if (cfg.n_allow == MAX_LIST || v[0] != '/' || strstr(v, "..")) usage(v);
            cfg.allow[cfg.n_allow++] = v;
        } else if (!strcmp(o, "--file")) {
            const char *colon = strrchr(v, ':');
            size_t len = colon ? (size_t)(colon - v) : 0;
            if (cfg.n_file == MAX_LIST || !colon || len == 0 || len >= 256 || memchr(v, '/', len)) usage(v);
            memcpy(cfg.file_name[cfg.n_file], v, len);
            cfg.file_name[cfg.n_file][len] = 0;
            cfg.file_fd[cfg.n_file++] = (int)number(colon + 1);
        } else usage(o);
    }
    if (i + 1 >= argc) usage("missing -- PROGRAM");
    if (cfg.uid == 0 || cfg.gid == 0) usage("uid and gid must be non-zero");
    cfg.argv = argv + i + 1;
}

static void mkdirs(const char *path) {
    char buf[PATH_MAX];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) usage(path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) && errno != EEXIST) die(buf);
        *p = '/';
    }
    if (mkdir(buf, 0755) && errno != EEXIST) die(buf);
}

/* Read-only, nosuid, nodev, recursively (mount_setattr, kernel >= 5.12; one remount otherwise). */
static void make_readonly(const char *target) {
    struct mount_attr attr = {.attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV};
    if (syscall(SYS_mount_setattr, -1, target, AT_RECURSIVE, &attr, sizeof attr) == 0) return;
    if (errno != ENOSYS) die(target);
    if (mount(NULL, target, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL)) die(target);
}

static void tmpfs(const char *target, unsigned long flags, const char *opts) {
    if (mount("tmpfs", target, "tmpfs", flags, opts)) die(target);
}

/* NEW_ROOT + path, in buf. */
static char *in_root(char *buf, size_t n, const char *path) {
    if (snprintf(buf, n, "%s%s", NEW_ROOT, path) >= (int)n) usage(path);
    return buf;
}

/* Show the allowed host path inside the new root: a read-only bind, or the same symlink. The host path
 * was opened (O_PATH) before NEW_ROOT covered /tmp, so paths under the host's /tmp work too. */
static void allow_path(const char *host, int fd) {
    char target[PATH_MAX], link[PATH_MAX], source[64];
    struct stat st;
    if (fd < 0 || fstat(fd, &st)) return; /* absent on this machine */
    in_root(target, sizeof target, host);
    if (S_ISLNK(st.st_mode)) {
        ssize_t n = readlinkat(fd, "", link, sizeof link - 1);
        if (n < 0) die(host);
        link[n] = 0;
        char *slash = strrchr(target, '/');
        *slash = 0;
        mkdirs(target);
        *slash = '/';
        if (symlink(link, target) && errno != EEXIST) die(target);
        return;
    }
    if (!S_ISDIR(st.st_mode)) return;
    mkdirs(target);
    snprintf(source, sizeof source, "/proc/self/fd/%d", fd);
    if (mount(source, target, NULL, MS_BIND | MS_REC, NULL)) die(host);
    make_readonly(target);
}

static int under_tmp(const char *p) {
    return !strncmp(p, "/tmp/", 5) || !strcmp(p, "/tmp");
}

/* The filesystem as the program sees it: a fresh tmpfs root with the allowed paths, a new /proc, a
 * /dev with null, zero, full, random and urandom only, and a private size-limited /tmp (the program's
 * working dir is /tmp/work); then pivot_root into it and detach the host's root. */
static void build_filesystem(void) {
    char path[PATH_MAX], opts[128];
    int allow_fd[MAX_LIST];
    umask(022); /* the directories made here must be searchable by the program whatever the parent's umask */
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL)) die("make mounts private");
    for (int i = 0; i < cfg.n_allow; i++) allow_fd[i] = open(cfg.allow[i], O_PATH | O_NOFOLLOW | O_CLOEXEC);
    tmpfs(NEW_ROOT, MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=4096,mode=0755");
    for (int i = 0; i < cfg.n_allow; i++)
        if (!under_tmp(cfg.allow[i])) allow_path(cfg.allow[i], allow_fd[i]);

    mkdirs(in_root(path, sizeof path, "/proc"));
    if (mount("proc", path, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL)) die("mount /proc");

    mkdirs(in_root(path, sizeof path, "/dev"));
    tmpfs(path, MS_NOSUID | MS_NOEXEC, "size=64k,nr_inodes=64,mode=0755");
    for (size_t i = 0; i < N_DEVICES; i++) {
        char host[32];
        snprintf(host, sizeof host, "/dev/%s", DEVICES[i]);
        in_root(path, sizeof path, host);
        int fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0666);
        if (fd < 0) die(path);
        close(fd);
        if (mount(host, path, NULL, MS_BIND, NULL)) die(host);
        if (mount(NULL, path, NULL, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NOEXEC, NULL)) die(path);
    }
    static const char *LINKS[][2] = {{"/proc/self/fd", "/dev/fd"}, {"/proc/self/fd/0", "/dev/stdin"},
                                     {"/proc/self/fd/1", "/dev/stdout"}, {"/proc/self/fd/2", "/dev/stderr"}};
    for (size_t i = 0; i < sizeof LINKS / sizeof LINKS[0]; i++)
        if (symlink(LINKS[i][0], in_root(path, sizeof path, LINKS[i][1]))) die(path);
    if (mount(NULL, in_root(path, sizeof path, "/dev"), NULL, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NOEXEC, NULL))
        die("remount /dev");

    mkdirs(in_root(path, sizeof path, "/tmp"));
    snprintf(opts, sizeof opts, "size=%lu,nr_inodes=%lu,mode=1777", cfg.tmp_bytes, cfg.tmp_inodes);
    tmpfs(path, MS_NOSUID | MS_NODEV, opts);
    /* The working dir is root's and sticky, like /tmp: the program may create and delete its own files
     * there, but cannot rename or remove root's entries (the directories leading to an allowed path under
     * /tmp/work, e.g. a venv in a checkout there), so nothing of the launcher's can be moved away from
     * under the next program of a group (code_harness.py leaves root's entries in place). */
    in_root(path, sizeof path, "/tmp/work");
    if (mkdir(path, 0755) || chmod(path, 01777)) die(path);
    /* allowed paths under /tmp (e.g. a venv or checkout there) go on top of the private /tmp, not under it */
    for (int i = 0; i < cfg.n_allow; i++)
        if (under_tmp(cfg.allow[i])) allow_path(cfg.allow[i], allow_fd[i]);
    for (int i = 0; i < cfg.n_allow; i++)
        if (allow_fd[i] >= 0) close(allow_fd[i]);
    in_root(path, sizeof path, "/tmp/work");
    for (int i = 0; i < cfg.n_file; i++) {
        char file[PATH_MAX + 300];
        snprintf(file, sizeof file, "%s/%s", path, cfg.file_name[i]);
        int out = open(file, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
        if (out < 0 || fchown(out, cfg.uid, cfg.gid)) die(file);
        char buf[65536];
        ssize_t n;
        while ((n = read(cfg.file_fd[i], buf, sizeof buf)) > 0)
            if (write(out, buf, (size_t)n) != n) die(file);
        if (n < 0) die(file);
        close(out);
        close(cfg.file_fd[i]);
    }
    if (mount(NULL, NEW_ROOT, NULL, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL)) die("remount root");
    if (chdir(NEW_ROOT)) die("chdir new root");
    if (syscall(SYS_pivot_root, ".", ".") == 0) {
        if (umount2(".", MNT_DETACH)) die("detach the host root");
    } else if (mount(".", "/", NULL, MS_MOVE, NULL) || chroot(".")) { /* rootfs (initramfs) cannot pivot */
        die("enter the new root");
    }
    if (chdir("/")) die("chdir /");
    if (sethostname("sandbox", 7)) die("sethostname");
}

/* Close every fd >= first (close_range on kernels >= 5.9, a loop otherwise). */
static void close_from(int first) {
    if (syscall(SYS_close_range, first, ~0U, 0) == 0) return;
    for (int fd = first; fd < 1024; fd++) close(fd);
}

static void limit(int resource, rlim_t value, const char *name) {
    struct rlimit rl = {value, value};
    if (resource == RLIMIT_CPU) rl.rlim_max = value + 1; /* SIGXCPU first, SIGKILL one second later */
    if (setrlimit(resource, &rl)) die(name);
}

static void exec_program(void) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int s = 1; s < NSIG; s++) signal(s, SIG_DFL);
    if (setsid() < 0) die("setsid");
    if (setgroups(0, NULL) || setresgid(cfg.gid, cfg.gid, cfg.gid)) die("drop groups");
    limit(RLIMIT_AS, cfg.as, "RLIMIT_AS");
    limit(RLIMIT_CPU, cfg.cpu, "RLIMIT_CPU");
    limit(RLIMIT_FSIZE, cfg.fsize, "RLIMIT_FSIZE");
    limit(RLIMIT_NOFILE, cfg.nofile, "RLIMIT_NOFILE");
    limit(RLIMIT_NPROC, cfg.nproc, "RLIMIT_NPROC");
    limit(RLIMIT_CORE, 0, "RLIMIT_CORE");
    limit(RLIMIT_MEMLOCK, 0, "RLIMIT_MEMLOCK");
    limit(RLIMIT_MSGQUEUE, 0, "RLIMIT_MSGQUEUE");
    if (cfg.result_fd >= 0 && cfg.result_fd != 3 && dup2(cfg.result_fd, 3) != 3) die("result fd");
    close_from(cfg.result_fd >= 0 ? 4 : 3);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) die("no_new_privs");
    if (setresuid(cfg.uid, cfg.uid, cfg.uid)) die("setresuid");
    if (chdir("/tmp/work")) die("chdir");
    umask(077);
    char *env[] = {NULL};
    execve(cfg.argv[0], cfg.argv, env);
    die(cfg.argv[0]);
}

/* pid 1 of the new pid namespace: build the filesystem, run the program, reap, report its status. */
static void run_init(int lifeline_fd, int status_fd) {
    signal(SIGUSR1, SIG_DFL);
    signal(SIGALRM, SIG_DFL);
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)) die("pdeathsig");
    struct pollfd alive = {.fd = lifeline_fd, .events = POLLIN};
    if (poll(&alive, 1, 0) != 0) _exit(SETUP_FAILED); /* the launcher died before PDEATHSIG was armed */
    close(lifeline_fd);
    build_filesystem();
    pid_t child = fork();
    if (child < 0) die("fork program");
    if (child == 0) {
        close(status_fd);
        exec_program();
    }
    if (status_fd != 3 && dup2(status_fd, 3) != 3) die("status fd");
    close_from(4);
    status_fd = 3;
    int status = 0;
    for (;;) {
        int st;
        pid_t pid = waitpid(-1, &st, 0);
        if (pid == child) {
            status = st;
            break;
        }
        if (pid < 0 && errno != EINTR) die("waitpid");
    }
    if (write(status_fd, &status, sizeof status) != (ssize_t)sizeof status) die("report status");
    _exit(0); /* the kernel now kills whatever is left in the namespace */
}

static volatile sig_atomic_t stop_requested;

/* SIGALRM (backup wall clock) or SIGUSR1 (the parent's stop request): kill init, then keep waiting for
 * it, so that the launcher exits only once every process of the namespace is gone. */
static void on_stop(int sig) {
    (void)sig;
    stop_requested = 1;
    if (init_pid > 0) kill(init_pid, SIGKILL);
}

int main(int argc, char **argv) {
    parse(argc, argv);
    struct sigaction sa = {.sa_handler = on_stop};
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR1, &sa, NULL) || sigaction(SIGALRM, &sa, NULL)) die("sigaction");
    int status_pipe[2], lifeline[2];
    if (pipe2(status_pipe, O_CLOEXEC) || pipe2(lifeline, O_CLOEXEC)) die("pipe");
    if (unshare(CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS)) die("unshare");
    init_pid = fork();
    if (init_pid < 0) die("fork init");
    if (init_pid == 0) {
        close(status_pipe[0]);
        close(lifeline[1]);
        run_init(lifeline[0], status_pipe[1]);
    }
    close(status_pipe[1]);
    close(lifeline[0]);
    for (int i = 0; i < cfg.n_file; i++) close(cfg.file_fd[i]);
    if (stop_requested) kill(init_pid, SIGKILL);
    alarm(cfg.wall);
    int st;
    while (waitpid(init_pid, &st, 0) < 0)
        if (errno != EINTR) die("waitpid init");
    int status;
    if (read(status_pipe[0], &status, sizeof status) != (ssize_t)sizeof status) {
        if (WIFEXITED(st)) _exit(WEXITSTATUS(st)); /* init failed during setup (its message is on stderr) */
        status = st;                                  /* init was killed: report it like the program */
    }
    if (WIFEXITED(status)) _exit(WEXITSTATUS(status));
    int sig = WIFSIGNALED(status) ? WTERMSIG(status) : SIGKILL;
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    signal(sig, SIG_DFL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    kill(getpid(), sig);
    _exit(128 + sig);
}
